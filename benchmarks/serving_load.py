"""The served champion under a bounded load, then under bad input: `mlflow models serve` on
127.0.0.1 as a team would run it, asked over HTTP by concurrent clients.

    python benchmarks/serving_load.py --run-dir <a finished pipeline> [--clients 4]
        [--requests 200] [--sizes 1 8 32] [--seconds 60] [--large-side 1024]
    python benchmarks/serving_load.py --run-dir <a workspace> --members r1=models/round_1 ...

The first serves the run's champion; the second registers the given model folders (each with
model.safetensors + model.json) as an equal-weight ensemble, as trained and ten-crop at 1x, in a
scratch store (<run-dir>/serving_load.db): trained models, before the pipeline's test time.

Phase 1, per request size: ``--clients`` threads each send up to ``--requests`` requests of that
many test images (stopping by itself after ``--seconds``): p50 / p95 / p99 latency, images per
second, errors (non-200) and wrong answers (against the model loaded in this process), and the
server's peak resident memory (its whole process tree, sampled every 0.1 s).
Beside it, the offline rate of the same members and views (``test_time.views.predict_views``
over the same images, each member at its tuned scale): the pipeline's own speed.
With ``--large-side S``, phase 1 runs again on the same images enlarged to S x S pixels (photo
sized files: decoding and the resize dominate, and memory must not grow with the request).
Phase 2: each malformed kind (bad base64, not an image, a truncated header, truncated pixels,
an empty frame, a wrong column, a server path, too many images, too many bytes, too many pixels,
a decompression bomb, not JSON)
interleaved with good requests: every bad one must get a 4xx with a message, every good one the
right answer, and the server must still be up.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from common import print_table, write_result
from PIL import Image

from noisytail.data.manifest import read_manifest
from noisytail.serving.server import ModelServer, image_request


class PeakMemory:
    """The peak resident memory of a process and its children, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def load_phase(server, images, expected, size, clients, requests, seconds) -> dict:
    """``clients`` threads, each up to ``requests`` requests of ``size`` images."""
    latencies, errors, wrong, done = [], 0, 0, 0
    lock, deadline = threading.Lock(), time.perf_counter() + seconds

    def client(seed: int) -> None:
        nonlocal errors, wrong, done
        rng = np.random.default_rng(seed)
        for _ in range(requests):
            if time.perf_counter() > deadline:
                return
            pick = rng.choice(len(images), size, replace=len(images) < size)
            body = image_request([images[i] for i in pick])
            started = time.perf_counter()
            try:
                status, answer = server.post(body, timeout=600)
            except OSError:  # refused, reset or timed out: an error, not the end of the run
                status, answer = 0, {}
            took = time.perf_counter() - started
            with lock:
                latencies.append(took)
                if status != 200:
                    errors += 1
                    continue
                done += size
                got = [row["class_1"] for row in answer["predictions"]]
                wrong += sum(g != expected[i] for g, i in zip(got, pick, strict=True))

    with PeakMemory(server.process.pid) as memory:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        wall = time.perf_counter() - started
    return {
        "images_per_request": size,
        "requests": len(latencies),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "images_per_second": round(done / wall, 2),
        "errors": errors,
        "wrong_answers": wrong,
        "peak_rss_mb": round(memory.peak / 2**20),
    }


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def bad_requests(limits: dict) -> dict[str, bytes]:
    """One body per malformed kind; each must be refused with a 4xx and a message."""
    frame = lambda column, *cells: json.dumps(  # noqa: E731
        {"dataframe_split": {"columns": [column], "data": [[c] for c in cells]}}
    ).encode()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    side = int(limits["max_pixels"] ** 0.5) + 1
    tiny = png_bytes(Image.new("L", (8, 8)))
    noise = np.random.default_rng(0).integers(0, 255, (1500, 2300, 3), dtype=np.uint8)
    pixels = png_bytes(Image.fromarray(noise[:64, :64]))  # cut in its pixel data, header whole
    bomb = png_bytes(Image.new("1", (20_000, 20_000)))  # 400 MP of one colour: a few tens of KB
    return {
        "bad base64": frame("image", "%%% not base64 %%%"),
        "not an image": frame("image", b64(b"GIF89a, or so it says")),
        "truncated header": frame("image", b64(tiny[: len(tiny) // 2])),
        "truncated pixels": frame("image", b64(pixels[: len(pixels) * 2 // 3])),
        "empty frame": frame("image"),
        "wrong column": frame("picture", b64(tiny)),
        "server path": frame("path", "/etc/passwd"),
        "too many images": frame("image", *[b64(tiny)] * (limits["max_images"] + 1)),
        "too many bytes": frame("image", b64(png_bytes(Image.fromarray(noise)))),
        "too many pixels": frame("image", b64(png_bytes(Image.new("L", (side, side))))),
        "decompression bomb": frame("image", b64(bomb)),
        "not JSON": b'{"dataframe_split": ',
    }


def served_top1(model, images: list[bytes]) -> list[str]:
    """The in-process model's top-1 class of each image: what the server must answer."""
    encoded = [base64.b64encode(i).decode() for i in images]
    return model.predict(pd.DataFrame({"image": encoded}))["class_1"].tolist()


def enlarged_png(path: Path, side: int) -> bytes:
    """The image at ``path`` resized to ``side`` x ``side``, as PNG bytes (a photo-sized file)."""
    with Image.open(path) as image:
        return png_bytes(image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))


def bad_input_phase(server, images, expected, limits) -> list[dict]:
    rows = []
    for kind, body in bad_requests(limits).items():
        status, answer = server.post(body)
        message = str(answer.get("message", ""))
        try:
            good = server.predict(images[:4])
        except (OSError, RuntimeError):  # the server died or refused a good request
            good = []
        rows.append({
            "kind": kind, "status": status, "refused_4xx": 400 <= status < 500,
            "has_message": bool(message) and "Traceback" not in json.dumps(answer),
            "next_good_correct": [r["class_1"] for r in good] == expected[:4],
            "message": message.split("Error: ")[-1][:120],
        })  # fmt: skip
    return rows


def offline_rate(spec: dict, member_dirs: dict, paths: list[Path]) -> float:
    """Images per second of predict_views over the same members, views and images."""
    from accelerate import Accelerator

    from noisytail.data.dataset import ImageDataset
    from noisytail.data.manifest import Manifest
    from noisytail.models.network import load_network
    from noisytail.prediction import model_view
    from noisytail.test_time.views import enlarged_transform, predict_views

    table = pd.DataFrame({"sample_id": range(len(paths)), "path": [str(p) for p in paths],
                          "label": 0, "split": "test"})  # fmt: skip
    manifest = Manifest(table, tuple(spec["classes"]), Path("/"))
    seconds = 0.0
    for member in spec["members"]:
        model, _ = load_network(Path(member_dirs[member["name"]]) / "model.safetensors")
        size, view = model_view(model)
        channels = model.config.in_chans
        transform = enlarged_transform(size, channels, view, member["scale"])
        dataset = ImageDataset.from_manifest(manifest, "test", transform, channels=channels)
        started = time.perf_counter()
        predict_views(model, dataset, size, Accelerator(cpu=True), top_k=spec["view_top_k"],
                      batch_size=64, workers=0)  # fmt: skip
        seconds += time.perf_counter() - started
    return len(paths) / seconds


def register_members(members: list[str], classes: list[str], uri: str) -> str:
    """``name=folder`` models as an equal-weight ensemble in the store ``uri``; its model URI."""
    import mlflow

    from noisytail.config.serving import ServingLimits
    from noisytail.config.test_time import TTAConfig, TuningConfig
    from noisytail.serving.model import ensemble_spec, log_ensemble
    from noisytail.serving.requirements import pinned_requirements

    folders = dict(m.split("=", 1) for m in members)
    plain = [{"name": n, "tau": None, "scale": 1.0, "mode": "ten_crop",
              "weight": 1.0 / len(folders), "mixed_precision": "no"} for n in folders]  # fmt: skip
    spec = ensemble_spec(plain, classes, TuningConfig().top, TTAConfig().top_k, ServingLimits())
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serving-load")
    with mlflow.start_run(run_name="serving-load/register"):
        version = log_ensemble(spec, folders, "serving-load", "champion", {},
                               pinned_requirements("noisytail.serving.entry"))  # fmt: skip
    return f"models:/serving-load/{version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", default=".", help="a finished pipeline (mlflow.db, data)")
    parser.add_argument("--model", default="models:/noisytail-ensemble@champion")
    parser.add_argument("--members", nargs="+", metavar="NAME=FOLDER",
                        help="serve these trained models instead of the champion")  # fmt: skip
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="per client and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=60, help="per size, at most")
    parser.add_argument("--sample", type=int, default=256, help="test images to draw from")
    parser.add_argument("--large-side", type=int, default=0,
                        help="also load-test the images enlarged to this size")  # fmt: skip
    parser.add_argument("--name", default="serving_load")
    args = parser.parse_args()

    import mlflow

    run_dir = Path(args.run_dir).resolve()
    manifest = read_manifest(run_dir / "data/prepared/manifest.parquet")
    uri = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{run_dir / 'mlflow.db'}")
    if args.members:
        uri = f"sqlite:///{run_dir / 'serving_load.db'}"
        args.model = register_members([f"{n}={(run_dir / f).resolve()}" for n, f in
                                       (m.split("=", 1) for m in args.members)],
                                      list(manifest.classes), uri)  # fmt: skip
    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(args.model))
    spec = json.loads((local / "artifacts" / "ensemble.json").read_text())
    member_dirs = {m["name"]: local / "artifacts" / m["name"] for m in spec["members"]}
    test = manifest.split("test" if (manifest.table["split"] == "test").any() else "val")
    paths = [manifest.resolve(p) for p in test["path"].iloc[: args.sample]]
    images = [p.read_bytes() for p in paths]
    in_process = mlflow.pyfunc.load_model(str(local), model_config={"max_images": len(images)})
    expected = served_top1(in_process, images)
    offline = offline_rate(spec, member_dirs, paths)
    print(f"offline (predict_views, {len(spec['members'])} members): {offline:.1f} images/s")

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    side = Image.open(paths[0]).size
    with ModelServer(args.model, cwd=run_dir, env=env, log=run_dir / "serving_load.log") as server:
        rows = [{"images": f"{side[0]} x {side[1]}",
                 **load_phase(server, images, expected, size, args.clients, args.requests,
                              args.seconds)} for size in args.sizes]  # fmt: skip
        print_table(rows)
        bad = bad_input_phase(server, images, expected, spec["limits"])
        alive = server.alive()
    print_table(bad)
    large_rows = []
    if args.large_side:  # a fresh server: its memory starts from the large images' own floor
        large = [enlarged_png(p, args.large_side) for p in paths[:64]]
        large_expected = served_top1(in_process, large)
        with ModelServer(args.model, cwd=run_dir, env=env,
                         log=run_dir / "serving_load_large.log") as server:  # fmt: skip
            large_rows = [{"images": f"{args.large_side} x {args.large_side}",
                           **load_phase(server, large, large_expected, size, args.clients,
                                        args.requests, args.seconds)}
                          for size in (1, max(args.sizes))]  # fmt: skip
        print_table(large_rows)
    by_size = {r["images_per_request"]: r for r in rows}
    summary = {
        "offline_images_per_second": round(offline, 2),
        "members": [m["name"] for m in spec["members"]],
        "good_requests_all_correct": all(
            r["errors"] == r["wrong_answers"] == 0 for r in rows + large_rows
        ),  # fmt: skip
        "bad_requests_all_4xx": all(r["refused_4xx"] and r["has_message"] for r in bad),
        "good_after_each_bad": all(r["next_good_correct"] for r in bad),
        "server_alive_after": alive,
    }
    if 1 in by_size and max(by_size) > 1:
        big = by_size[max(by_size)]
        one = by_size[1]["peak_rss_mb"]
        summary["memory_ratio_largest_to_1"] = round(big["peak_rss_mb"] / one, 2)
        summary["served_to_offline_rate"] = round(big["images_per_second"] / offline, 2)
    if large_rows:
        summary["large_memory_ratio_largest_to_1"] = round(
            large_rows[-1]["peak_rss_mb"] / large_rows[0]["peak_rss_mb"], 2
        )
    print(json.dumps(summary, indent=1))
    write_result(args.name, rows + large_rows, summary=summary, bad_input=bad, model=args.model,
                 run_dir=str(run_dir), clients=args.clients,
                 seconds_per_size=args.seconds)  # fmt: skip


if __name__ == "__main__":
    main()
