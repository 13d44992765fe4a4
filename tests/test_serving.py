"""The served ensemble: request limits, malformed input, paths, micro-batches, the pinned
environment, the real HTTP server and `noisytail predict` on a folder (tiny test_* members)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, save_image
from PIL import Image, ImageFile

from noisytail.config import ConfigError
from noisytail.config.model import ModelConfig
from noisytail.config.serving import ServingLimits
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest
from noisytail.models.network import build_network, save_network
from noisytail.serving.inputs import RequestError, decode_image, request_images
from noisytail.serving.model import ensemble_spec
from noisytail.serving.predictor import EnsemblePredictor
from noisytail.serving.requirements import BOOTSTRAP, pinned_requirements, propagate_markers
from noisytail.test_time.ensemble import ensemble_top_k
from noisytail.test_time.scoring import member_top_k
from noisytail.test_time.views import enlarged_transform, predict_views

CLASSES = ("bag", "boot", "coat", "dress", "shirt", "sock")
MEMBERS = [
    {"name": "colour", "tau": None, "scale": 1.0, "mode": "none", "weight": 0.6,
     "mixed_precision": "no"},
    {"name": "grey", "tau": 0.7, "scale": 1.5, "mode": "ten_crop", "weight": 0.4,
     "mixed_precision": "no"},
]  # fmt: skip


def png(size=(20, 20), seed=0, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> Path:
    """Two members unlike each other: RGB and grey, tau and none, ten-crop at 1.5x."""
    root = tmp_path_factory.mktemp("members")
    torch.manual_seed(0)
    kinds = (("colour", "test_resnet", 3, "pad"), ("grey", "test_efficientnet", 1, "zoom"))
    for name, backbone, chans, crop in kinds:
        model = build_network(ModelConfig(backbone=backbone, in_chans=chans, embedding_dim=16),
                              len(CLASSES)).eval()  # fmt: skip
        model.view = {"image_size": 16, "crop": crop, "margin": 0.125}
        save_network(model, root / name / "model.safetensors", CLASSES)
    return root


def spec(precision: str = "no", **limits) -> dict:
    members = [{**m, "mixed_precision": precision} for m in MEMBERS]
    return ensemble_spec(members, CLASSES, top=4, view_top_k=5, limits=ServingLimits(**limits))


def predictor(members: Path, precision: str = "no", **limits) -> EnsemblePredictor:
    return EnsemblePredictor(spec(precision, **limits),
                             {m["name"]: members / m["name"] for m in MEMBERS})  # fmt: skip


def test_micro_batches_give_the_one_batch_answer(members):
    images = [decode_image(png(seed=s), ServingLimits()) for s in range(7)]
    one_batch = predictor(members, micro_batch=64).predict_images(images)
    batched = predictor(members, micro_batch=3).predict_images(images)
    assert np.array_equal(one_batch[0], batched[0])
    np.testing.assert_allclose(one_batch[1], batched[1], atol=1e-6)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_served_lists_are_the_pipelines_cache_scored(members, tmp_path, precision):
    """Serving predicts as predict_views + member_top_k + ensemble_top_k did offline, in the
    precision the members were trained in (accelerate's on the CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    paths = [save_image(tmp_path / f"{i}.png", (20, 20), seed=i) for i in range(5)]
    table = pd.DataFrame({"sample_id": range(5), "path": [p.name for p in paths],
                          "label": 0, "split": "test"})  # fmt: skip
    manifest = Manifest(table, CLASSES, tmp_path)
    lists = []
    served = predictor(members, precision)
    AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process, else
    accelerator = Accelerator(cpu=True, mixed_precision=precision)
    for member, model, _, size, _ in served.members:
        channels = model.config.in_chans
        view = enlarged_transform(size, channels, served_view(model), member["scale"])
        dataset = ImageDataset.from_manifest(manifest, "test", view, channels=channels)
        cache = predict_views(model, dataset, size, accelerator, top_k=5, workers=0)
        lists.append(member_top_k({f"{member['scale']:g}": cache}, member, 4))
    offline = ensemble_top_k(lists, [m["weight"] for m in MEMBERS], k=5, top=4)
    online = served.predict_files([p.read_bytes() for p in paths])
    assert np.array_equal(offline[0], online[0])
    np.testing.assert_allclose(offline[1], online[1], atol=1e-5)
    if precision != "no":  # the precision was really used: fp32 answers differ
        fp32 = predictor(members).predict_files([p.read_bytes() for p in paths])
        assert np.abs(fp32[1] - online[1]).max() > 1e-5
    AcceleratorState._reset_state(reset_partial_state=True)  # the next test's own choice


def served_view(model):
    from noisytail.prediction import model_view

    return model_view(model)[1]


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (pd.DataFrame({"picture": [b64(png())]}), "needs an 'image' column"),
        (pd.DataFrame({"image": [], "path": []}), "needs an 'image' column.*not both"),
        (pd.DataFrame({"image": []}), "no rows"),
        (pd.DataFrame({"image": [b64(png())] * 4}), "limits.max_images = 3"),
        (pd.DataFrame({"image": ["not base64!"]}), "row 0: 'image' is not valid base64"),
        (pd.DataFrame({"image": [b64(png()), ""]}), "row 1: 'image' must be non-empty"),
        (pd.DataFrame({"image": [b64(png((45, 45)))]}), "limits.max_image_bytes = 5000"),
        (pd.DataFrame({"image": [b64(png((30, 30)))] * 3}), "limits.max_request_bytes = 9000"),
        (pd.DataFrame({"path": ["/etc/passwd"]}), "reads no server-side paths"),
    ],
)
def test_each_malformed_request_is_refused_naming_the_rule(frame, says):
    limits = ServingLimits(max_images=3, max_image_bytes=5000, max_request_bytes=9000)
    with pytest.raises(RequestError, match=says.replace("(", r"\(")):
        request_images(frame, limits)


def test_undecodable_and_oversized_images_are_refused(monkeypatch):
    limits = ServingLimits(max_pixels=10_000)
    with pytest.raises(RequestError, match="row 2: not a readable image"):
        decode_image(b"GIF89a but not really", limits, row=2)
    with pytest.raises(RequestError, match="not a readable image"):
        decode_image(png()[:60], limits)  # truncated in the header
    with pytest.raises(RequestError, match="not a readable image"):
        decode_image(png()[:-100], limits)  # a whole header, truncated pixels
    # crafted files make PIL's decoders raise more than OSError: every one is the client's
    data = png()
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (_ for _ in ()).throw(EOFError()))
    with pytest.raises(RequestError, match="row 0: not a readable image \\(EOFError"):
        decode_image(data, limits)
    monkeypatch.undo()
    pcx = io.BytesIO()
    Image.new("RGB", (8, 8)).save(pcx, "PCX")  # PIL reads it; a manifest never holds one
    with pytest.raises(RequestError, match="not a readable image"):
        decode_image(pcx.getvalue(), limits)
    big = png((400, 300))
    with pytest.raises(RequestError, match="400 x 300 = 120000 pixels.*max_pixels = 10000"):
        decode_image(big, limits)
    # PIL's bomb check (a warning below 2x its limit) is an error, whatever our limit says
    for pil_limit in (5_000, 100_000):  # over twice PIL's limit (its error), over it (a warning)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
        with pytest.raises(RequestError, match="decompression bomb"):
            decode_image(big, ServingLimits())
    monkeypatch.undo()
    assert decode_image(big, ServingLimits()).size == (400, 300)


def test_paths_are_read_only_under_the_root(tmp_path):
    root = tmp_path / "images"
    inside = save_image(root / "a" / "x.png")
    outside = save_image(tmp_path / "secret.png")
    (root / "link.png").symlink_to(outside)
    limits = ServingLimits()
    frame = lambda *p: pd.DataFrame({"path": list(p)})  # noqa: E731
    assert request_images(frame("a/x.png"), limits, root) == [inside.read_bytes()]
    for path in ("../secret.png", str(outside), "link.png", "a/../../secret.png"):
        with pytest.raises(RequestError, match="outside the allowed root"):
            request_images(frame(path), limits, root)
    for path in ("missing.png", "a", "a/x.png\x00.txt"):  # no file, a folder, a NUL byte
        with pytest.raises(RequestError, match="row 1: .*no readable file under the root"):
            request_images(frame("a/x.png", path), limits, root)


def test_limits_are_checked_as_params():
    with pytest.raises(ConfigError, match="serving.limits.micro_batch"):
        ServingLimits.from_mapping({"micro_batch": 0})
    with pytest.raises(ConfigError, match="unknown parameter"):
        ServingLimits.from_mapping({"max_megapixels": 3})


def test_the_environment_is_pinned_to_the_lock(tmp_path):
    lock = (REPO / "requirements.lock").read_text().splitlines()
    pins = pinned_requirements("noisytail.serving.entry", REPO / "requirements.lock")
    names = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    assert {"torch", "torchvision", "timm", "albumentations", "pillow", "numpy", "pandas",
            "accelerate", "pyarrow", "safetensors", "mlflow"} <= names  # fmt: skip
    # what those need is pinned too (timm's huggingface_hub, albumentations' scipy), never pip
    assert {"huggingface-hub", "scipy", "pydantic"} <= names and not names & BOOTSTRAP
    torch_pin = next(line for line in lock if line.startswith("torch=="))
    assert torch_pin in pins and all("==" in p for p in pins)
    # torch's CUDA wheels and triton keep their platform marker: the model installs on a Mac
    from packaging.requirements import Requirement

    conditional = {Requirement(p).name: Requirement(p).marker for p in pins if ";" in p}
    assert {"triton", "nvidia-cudnn-cu13", "nvidia-cublas"} <= set(conditional)
    mac = {"platform_system": "Darwin", "sys_platform": "darwin", "platform_machine": "arm64"}
    assert not conditional["triton"].evaluate(mac)
    assert not conditional["nvidia-cublas"].evaluate(mac)
    assert all(m.evaluate() for m in conditional.values())  # and all install here
    drifted = tmp_path / "requirements.lock"  # the lock moved on, the environment did not
    text = (REPO / "requirements.lock").read_text()
    drifted.write_text(text.replace("timm==", "timm==0.0.1  # was "))
    with pytest.raises(RuntimeError, match="timm==.*lock: 0.0.1"):
        pinned_requirements("noisytail.serving.entry", drifted)


def test_a_requirement_cycle_keeps_the_markers_that_enter_it():
    """app requires a (Linux only); a and b require each other; b requires c (Windows only);
    d hangs off app for Macs: the cycle a <-> b is Linux-only, as is all it requires."""
    linux, windows, mac = ('platform_system == "Linux"', 'platform_system == "Windows"',
                           'platform_system == "Darwin"')  # fmt: skip
    required_by = {"a": {("app", linux), ("b", None)}, "b": {("a", None)},
                   "c": {("b", windows)}, "d": {("app", mac)}}  # fmt: skip
    both = f"({linux}) and ({windows})"
    markers = propagate_markers({"app"}, required_by)
    assert markers == {"app": {None}, "a": {linux}, "b": {linux}, "c": {both}, "d": {mac}}
    # an unconditional way into the cycle makes it, and what it requires, unconditional
    into = propagate_markers({"app"}, {**required_by, "b": {("a", None), ("app", None)}})
    assert into["a"] == into["b"] == {None} and into["c"] == {windows}
    # the same graph without the cycle gives the same markers
    assert propagate_markers({"app"}, {**required_by, "a": {("app", linux)}}) == markers
    # marked edges inside cycles, another marker entering from outside (a graph on which a
    # version that replaced markers instead of growing them went round forever)
    m = [f'm{k} == "1"' for k in range(4)]
    tangled = {"n0": {("n6", None), ("n4", m[2]), ("n3", None), ("app", None)},
               "n1": {("n1", m[3]), ("n6", m[0])}, "n2": {("n0", None), ("n1", None)},
               "n3": {("n5", None), ("n0", m[3])}, "n4": {("n1", m[0]), ("n4", m[1])},
               "n5": {("n3", None), ("app", None)},
               "n6": {("n4", m[0]), ("n0", m[2]), ("n3", m[0])}}  # fmt: skip
    found = propagate_markers({"app"}, tangled)
    assert found["n0"] == found["n5"] == found["n3"] == {None}  # reached unconditionally
    assert all(any(m[0] in t for t in found[n]) for n in ("n1", "n4"))  # only through m0 edges


@pytest.fixture(scope="module")
def registered(members, tmp_path_factory):
    """The two members logged and registered as a pyfunc model in a throw-away store."""
    import mlflow

    from noisytail.serving.model import log_ensemble

    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-test")
    requirements = pinned_requirements("noisytail.serving.entry", REPO / "requirements.lock")
    with mlflow.start_run():
        version = log_ensemble(spec(max_images=8, micro_batch=4, max_pixels=1_000_000,
                                    max_image_bytes=50_000),
                               {m["name"]: members / m["name"] for m in MEMBERS},
                               "serving-test", "champion", {}, requirements)  # fmt: skip
    return {"uri": uri, "model": f"models:/serving-test/{version}", "store": store,
            "requirements": requirements}  # fmt: skip


def test_the_registered_model_answers_and_refuses_as_a_client_error(registered, members):
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(registered["uri"])
    model = mlflow.pyfunc.load_model(registered["model"])
    images = [png(seed=s) for s in range(5)]
    served = model.predict(pd.DataFrame({"image": [b64(i) for i in images]}))
    index, _ = predictor(members).predict_files(images, k=5)
    assert served["class_1"].tolist() == [CLASSES[i] for i in index[:, 0]]
    with pytest.raises(MlflowException) as refused:
        model.predict(pd.DataFrame({"image": [b64(b"not an image")]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "row 0: not a readable image" in refused.value.message
    assert "Traceback" not in refused.value.serialize_as_json()
    # a loader may change a limit (MLflow passes on only the keys the model logged)
    strict = mlflow.pyfunc.load_model(registered["model"], model_config={"max_images": 2})
    with pytest.raises(MlflowException, match="limits.max_images = 2"):
        strict.predict(pd.DataFrame({"image": [b64(i) for i in images[:3]]}))
    requirements = mlflow.pyfunc.get_model_dependencies(registered["model"])
    written = {line.strip() for line in Path(requirements).read_text().splitlines()}
    assert set(registered["requirements"]) <= written  # markers kept


def test_a_busy_model_answers_503_and_a_failure_500_without_a_trace(registered, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(registered["uri"])
    model = mlflow.pyfunc.load_model(
        registered["model"], model_config={"concurrent_requests": 1, "wait_seconds": 1}
    )
    inner = model.unwrap_python_model()
    request = pd.DataFrame({"image": [b64(png())]})
    inner.running.acquire()  # another request is being predicted
    with pytest.raises(MlflowException, match="busy.*waited 1 s .limits.wait_seconds") as busy:
        model.predict(request)
    assert busy.value.get_http_status_code() == 503
    inner.running.release()
    assert len(model.predict(request)) == 1  # its turn came back
    monkeypatch.setattr(inner.predictor, "predict_files",
                        lambda files: (_ for _ in ()).throw(RuntimeError("a bug")))  # fmt: skip
    with pytest.raises(MlflowException) as failed:
        model.predict(request)
    assert failed.value.get_http_status_code() == 500
    assert "a bug" not in failed.value.message and "Traceback" not in failed.value.message
    monkeypatch.undo()
    assert len(model.predict(request)) == 1  # a failure gave its turn back


def test_the_wait_for_a_turn_ends_before_the_servers_timeout(registered, monkeypatch):
    """A 30 s wait under MLflow's 20 s request timeout would be a 504: the wait is cut to 10 s."""
    import mlflow

    mlflow.set_tracking_uri(registered["uri"])
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "20")
    capped = mlflow.pyfunc.load_model(registered["model"], model_config={"wait_seconds": 30})
    assert capped.unwrap_python_model().wait_seconds == 10
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "300")
    kept = mlflow.pyfunc.load_model(registered["model"], model_config={"wait_seconds": 30})
    assert kept.unwrap_python_model().wait_seconds == 30


def test_the_real_server_refuses_bad_requests_and_keeps_serving(registered, tmp_path):
    from noisytail.serving.server import ModelServer, image_request

    good = [png(seed=s) for s in range(3)]
    white = io.BytesIO()
    Image.new("L", (4000, 4000), 255).save(white, "PNG")  # 16 MP in a few KB, over the 1 MP limit
    rows = lambda *cells: json.dumps(  # noqa: E731
        {"dataframe_split": {"columns": ["image"], "data": [[c] for c in cells]}}
    ).encode()
    bad = {
        "not base64": rows("%%%"),
        "not an image": rows(b64(b"hello")),
        "empty frame": rows(),
        "wrong column": json.dumps(
            {"dataframe_split": {"columns": ["picture"], "data": [["x"]]}}
        ).encode(),
        "server path": json.dumps(
            {"dataframe_split": {"columns": ["path"], "data": [["/etc/passwd"]]}}
        ).encode(),
        "too many images": image_request(good * 3),
        "too many pixels": image_request([white.getvalue()]),
        "too many bytes": image_request([png((200, 200))]),
        "truncated pixels": image_request([good[0][:-100]]),
        "not JSON": b"{",
    }
    names = {"too many images": "limits.max_images = 8", "too many pixels": "limits.max_pixels",
             "too many bytes": "limits.max_image_bytes = 50000",
             "not an image": "not a readable image", "truncated pixels": "not a readable image",
             "server path": "reads no server-side paths"}  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    with ModelServer(registered["model"], env=env, log=tmp_path / "server.log") as server:
        expected = server.predict(good)
        for kind, body in bad.items():
            status, answer = server.post(body)
            assert 400 <= status < 500, (kind, status, answer)
            assert answer.get("message") and "Traceback" not in json.dumps(answer), kind
            assert names.get(kind, "") in answer["message"], (kind, answer["message"][:300])
            assert server.predict(good) == expected, f"after {kind}"


def test_noisytail_predict_streams_a_folder_into_a_csv(registered, tmp_path):
    folder = tmp_path / "shop"
    for i in range(11):
        save_image(folder / f"{i // 4}" / f"{i:02d}.png", (20, 20), seed=i)
    (folder / "2" / "broken.png").write_bytes(b"not an image")
    (folder / "2" / "link.png").symlink_to(save_image(tmp_path / "elsewhere.png"))
    # folder links are not walked: one back into the folder (a loop), one out of it
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    save_image(tmp_path / "other" / "a.png")
    (folder / "other").symlink_to(tmp_path / "other", target_is_directory=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": registered["uri"]}
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-m", "noisytail.cli", "predict", str(folder), "--out", str(out),
         "--model", registered["model"], "--batch", "4"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "2 file(s) refused" in result.stdout
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 13 and table["path"].is_monotonic_increasing
    broken = table[table["path"].str.endswith("broken.png")]
    assert broken["error"].str.contains("not a readable image").all()
    link = table[table["path"].str.endswith("link.png")]  # a link out of the folder: not read
    assert link["error"].str.contains("outside the allowed root").all()
    fine = table[table["error"] == ""]
    assert len(fine) == 11 and set(fine["class_1"]) <= set(CLASSES)
    assert (fine["prob_1"] >= fine["prob_2"]).all()


@pytest.mark.slow
def test_the_registered_model_predicts_in_a_fresh_environment(registered, tmp_path):
    """A virtual environment built from the model's own requirements.txt only (no noisytail
    installed: the model ships its code) loads it and predicts what this environment does."""
    import mlflow

    mlflow.set_tracking_uri(registered["uri"])
    local = mlflow.artifacts.download_artifacts(registered["model"], dst_path=str(tmp_path / "m"))
    requirements = Path(local) / "requirements.txt"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                   check=True)  # fmt: skip
    images = [b64(png(seed=s)) for s in range(4)]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "images = json.loads(sys.stdin.read())\n"
        "print(model.predict(pd.DataFrame({'image': images})).to_json(orient='records'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    fresh = subprocess.run([str(python), "-c", script, local], input=json.dumps(images),
                           capture_output=True, text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    here = mlflow.pyfunc.load_model(local).predict(pd.DataFrame({"image": images}))
    answer = pd.DataFrame(json.loads(fresh.stdout.strip().splitlines()[-1]))
    assert answer["class_1"].tolist() == here["class_1"].tolist()
    np.testing.assert_allclose(answer["prob_1"], here["prob_1"], atol=1e-6)
