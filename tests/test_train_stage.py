"""pipelines/train.py as users run it: kill and resume, MLflow contents, two processes (gloo)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, tiny_manifest
from safetensors.torch import load_file

from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import manifest_digest, write_manifest
from noisytail.data.transforms import eval_transform
from noisytail.metrics import classification_report
from noisytail.models.network import load_network

PARAMS = {
    "seed": 0,
    "model": {"backbone": "test_resnet", "embedding_dim": 32},
    "train": {
        "epochs": 8,
        "batch_size": 16,
        "base_lr": 0.2,
        "warmup_epochs": 1,
        "workers": 0,
        "schedule": "step",
        "milestones": [5],
        "image_size": 32,
    },  # fmt: skip
    "augment": {"coarse_dropout": 0.5},
    "tracking": {"experiment": "stage-test"},
}


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    manifest = tiny_manifest(root / "toy", per_class=(120, 60, 30))
    manifest_path = write_manifest(manifest, root / "data" / "manifest.parquet")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip

    def command(out):
        return [sys.executable, str(REPO / "pipelines" / "train.py"), "--manifest",
                str(manifest_path), "--out", str(out), "--params", str(params),
                "--run-name", out.name, "--round", "0"]  # fmt: skip

    return root, command, env, manifest


def test_kill_and_resume_ends_with_the_uninterrupted_weights(stage):
    root, command, env, _ = stage
    subprocess.run(command(root / "straight"), env=env, check=True, capture_output=True)

    out = root / "killed"
    process = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (out / "checkpoints" / "epoch_0001").exists():  # two epochs done
        assert process.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (out / "done.json").exists()

    resumed = subprocess.run(command(out), env=env, check=True, capture_output=True, text=True)
    assert "resuming from" in resumed.stdout + resumed.stderr
    straight, again = (
        load_file(root / "straight" / "model.safetensors"),
        load_file(out / "model.safetensors"),
    )
    assert straight.keys() == again.keys()
    for key in straight:  # tolerance: CPU kernels are deterministic, so this is tight
        torch.testing.assert_close(again[key], straight[key], rtol=0, atol=1e-6, msg=key)

    # The resumed run continued the MLflow run it began: one run, every epoch logged.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stage-test")
    killed = client.search_runs([experiment.experiment_id], "attributes.run_name = 'killed'")
    assert len(killed) == 1 and killed[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(killed[0].info.run_id, "val_top1")]
    assert sorted(set(steps)) == list(range(1, 9))

    # The same command on a finished run does nothing.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    subprocess.run(command(out), env=env, check=True, capture_output=True)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_mlflow_run_holds_params_metrics_dataset_and_model(stage):
    root, command, env, manifest = stage
    if not (root / "straight" / "done.json").exists():
        subprocess.run(command(root / "straight"), env=env, check=True, capture_output=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stage-test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    run = runs["straight"]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "8"
    assert run.data.params["model.backbone"] == "test_resnet"
    assert run.data.tags["mlflow.source.git.commit"]
    history = client.get_metric_history(run.info.run_id, "val_top1")
    assert [m.step for m in history] == list(range(1, 9))
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == manifest_digest(manifest.split("train"))
    assert {t.key: t.value for t in dataset_input.tags}["dvc_round"] == "0"
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    assert "model/model.safetensors" in artifacts


def test_unreachable_tracking_server_fails_at_start(stage, tmp_path):
    root, command, env, _ = stage
    env = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # nothing listens on port 9
    started = time.time()
    result = subprocess.run(command(tmp_path / "x"), env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in errors[0]
    assert time.time() - started < 60 and not (tmp_path / "x" / "checkpoints").exists()
    assert not (tmp_path / "x" / "model.safetensors").exists()  # nothing trained


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_stay_in_sync_and_gather_exact_metrics(tmp_path):
    manifest = tiny_manifest(tmp_path / "toy", per_class=(40, 20, 10), val_per_class=5)  # odd val
    path = write_manifest(manifest, tmp_path / "manifest.parquet")
    out = tmp_path / "ddp"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              str(REPO / "tests" / "two_process_job.py"), "train", str(path), str(out)]  # fmt: skip
    subprocess.run(launch, check=True, capture_output=True, timeout=300)
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key

    import json

    done = json.loads((out / "done.json").read_text())
    assert done["num_processes"] == 2
    model, _ = load_network(out / "model.safetensors")
    model.eval()
    val = ImageDataset.from_manifest(manifest, "val", eval_transform(32))
    with torch.no_grad():
        logits = torch.cat([model(val[i][0][None]) for i in range(len(val))])
    expected = classification_report(logits.argmax(1).numpy(), val.labels.numpy(), 3)
    assert np.isclose(done["final"]["val_top1"], expected["top1"])
    assert np.isclose(done["final"]["val_mean_class_error"], expected["mean_class_error"])

    # Prediction on two processes: every sample exactly once, in order, as on one process.
    subprocess.run([*launch[:-3], "predict", str(path), str(out)], check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    from accelerate import Accelerator

    from noisytail.prediction import predict_top_k, read_predictions

    two = read_predictions(out / "predictions-2proc.parquet")
    one = predict_top_k(model, val, Accelerator(cpu=True), top_k=2, batch_size=4, workers=0,
                        with_embedding=True)  # fmt: skip
    assert two["sample_id"].tolist() == one["sample_id"].tolist() == val.sample_ids
    for column in ("topk_index", "topk_prob", "embedding"):
        np.testing.assert_allclose(np.stack(two[column]), np.stack(one[column]), atol=1e-5)
    np.testing.assert_allclose(two["label_prob"], one["label_prob"], atol=1e-6)


def test_a_rerun_with_changed_inputs_opens_a_new_mlflow_run(stage):
    """The folder of a finished run, re-run with other settings, starts afresh: a new MLflow
    run, never more metrics in the old one (the old run id is dropped before the tracker reads
    it), and no snapshot of the old run left behind."""
    import shutil

    root, command, env, _ = stage
    if not (root / "straight" / "done.json").exists():
        subprocess.run(command(root / "straight"), env=env, check=True, capture_output=True)
    out = root / "changed"
    shutil.copytree(root / "straight", out)
    (out / "model_epoch_2.safetensors").write_bytes(b"stale")
    changed = root / "changed.yaml"
    changed.write_text(yaml.safe_dump({**PARAMS, "train": {**PARAMS["train"], "epochs": 3}}))
    args = command(out)
    args[args.index("--params") + 1] = str(changed)
    result = subprocess.run(args, env=env, check=True, capture_output=True, text=True)
    assert "changed since the last run; starting afresh" in result.stdout
    assert not (out / "model_epoch_2.safetensors").exists()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("stage-test")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    old_id = (root / "straight" / "mlflow_run_id").read_text().strip()
    new_id = (out / "mlflow_run_id").read_text().strip()
    assert new_id != old_id and runs["changed"].info.run_id == new_id
    old_steps = [m.step for m in client.get_metric_history(old_id, "val_top1")]
    new_steps = [m.step for m in client.get_metric_history(new_id, "val_top1")]
    assert old_steps == list(range(1, 9)) and new_steps == [1, 2, 3]
    assert client.get_run(old_id).data.params["train.epochs"] == "8"
    assert client.get_run(new_id).data.params["train.epochs"] == "3"


def test_a_retrained_full_step_retrains_the_steps_built_on_it(tmp_path, monkeypatch):
    """hires and balance start from the previous step's weights: they are fingerprinted by
    those weights' content, so a full step trained anew (same path, other weights) makes them
    train anew too, instead of handing back the models fine-tuned from the old one."""
    import runpy

    from noisytail.config.members import member_plan

    manifest = tiny_manifest(tmp_path / "toy", per_class=(12, 8, 6))
    for folder in ("data/prepared", "data/clean/round_1"):
        write_manifest(manifest, tmp_path / folder / "manifest.parquet")
    rounds = [{"round": 1, "input": "data/prepared", "output": "data/clean/round_1"}]
    params = {**PARAMS, "train": {**PARAMS["train"], "epochs": 1},
              "hires": {"epochs": 1, "image_size": 40}, "crt": {"epochs": 1},
              "cleaning": {"rounds": rounds}, "members": {"m": {"round": 1}}}  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def step(name: str) -> bytes:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        monkeypatch.setattr(sys, "argv", ["member.py", "--member", "m", "--step", name])
        runpy.run_path(str(REPO / "pipelines" / "member.py"), run_name="__main__")
        plan = member_plan(params, "m")
        return (plan.step_dir(name) / "model.safetensors").read_bytes()

    before = {name: step(name) for name in ("full", "hires", "balance")}
    assert step("hires") == before["hires"]  # same inputs: the finished step is not repeated
    params["members"]["m"]["train"] = {"epochs": 2}  # the full step changes
    after = {name: step(name) for name in ("full", "hires", "balance")}
    for name in ("full", "hires", "balance"):
        assert after[name] != before[name], f"{name} was not retrained"


def test_tracking_off_logs_nothing_and_needs_no_mlflow(tmp_path, monkeypatch):
    """tracking.uri: off (the GPU smoke check, where the image has no MLflow): no run, no
    store, and mlflow is not imported for it."""
    from noisytail.tracking import RunTracker

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # importing it would now fail
    tracker = RunTracker("x", "run", uri="off")
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 1.0})
    tracker.end()
    assert not tracker.enabled and tracker.run_id is None
    assert not list(tmp_path.iterdir())
