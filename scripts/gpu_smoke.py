"""The GPU smoke check's Python half (scripts/gpu_smoke.sh run): synthetic data, the train stage
on one GPU in bf16, then with two processes where there are two GPUs; what it measured goes to
<out>/gpu_smoke.json. ``--cpu`` runs the same on the CPU (fp32): a dry run here."""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from noisytail.data.manifest import Manifest, write_manifest

SHAPES = ("horizontal_bar", "vertical_bar", "ring", "cross")


def shape(kind: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One shape at a random place on noise: a class a model tells by structure, not brightness."""
    image = rng.normal(30, 12, (size, size))
    r, c = rng.integers(size // 4, 3 * size // 4, 2)
    level, half = rng.uniform(170, 240), size // 4
    top, bottom, left, right = max(r - half, 0), min(r + half, size), max(c - half, 0), min(
        c + half, size)  # fmt: skip
    if kind in ("horizontal_bar", "cross"):
        image[r - 1 : r + 2, left:right] = level
    if kind in ("vertical_bar", "cross"):
        image[top:bottom, c - 1 : c + 2] = level
    if kind == "ring":
        image[top:bottom, [left, right - 1]] = level
        image[[top, bottom - 1], left:right] = level
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_data(root: Path, train: int = 450, val: int = 50) -> Path:
    rng, rows = np.random.default_rng(0), []
    for split, n in (("train", train), ("val", val)):
        for label, kind in enumerate(SHAPES):
            for i in range(n):
                path = f"{split}/{kind}_{i}.png"
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(shape(kind, rng), "L").save(root / path)
                rows.append({"sample_id": path, "path": path, "label": label, "split": split})
    manifest = Manifest(pd.DataFrame(rows), SHAPES, root.resolve())
    return write_manifest(manifest, root / "manifest.parquet")


def train(manifest: Path, out: Path, params: dict, processes: int, precision: str) -> dict:
    params_file = out.with_suffix(".params.yaml")
    params_file.write_text(yaml.safe_dump(params))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes",
              str(processes), "--num_machines", "1", "--mixed_precision", precision,
              "--dynamo_backend", "no"]  # fmt: skip
    if processes > 1:
        launch.insert(3, "--multi_gpu")
    if params["train"].get("cpu"):
        launch.insert(3, "--cpu")
    command = [*launch, "pipelines/train.py", "--manifest", str(manifest), "--out", str(out),
               "--params", str(params_file)]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (out.parent / f"{out.name}.log").write_text(result.stdout + result.stderr)
    record = {"processes": processes, "mixed_precision": precision, "returncode": result.returncode,
              "seconds": round(seconds, 1)}  # fmt: skip
    done = out / "done.json"
    if result.returncode == 0 and done.is_file():
        history = json.loads(done.read_text())["history"]
        record.update(epoch_seconds=[round(h["epoch_seconds"], 2) for h in history],
                      val_mean_class_error=history[-1]["val_mean_class_error"])  # fmt: skip
    else:
        record["error"] = (result.stderr or result.stdout)[-2000:]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="outputs/gpu_smoke")
    parser.add_argument("--cpu", action="store_true", help="a dry run on the CPU (fp32)")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    out = Path(args.out)
    work = Path("outputs/gpu_smoke_work")
    manifest = shapes_data(work / "data")
    gpus = 0 if args.cpu else torch.cuda.device_count()
    params = {"seed": 0, "tracking": {"uri": "off"},
              "model": {"backbone": "resnet18", "in_chans": 1},
              "train": {"epochs": args.epochs, "batch_size": 128,
                        "base_lr": 0.2, "warmup_epochs": 0, "workers": 4, "image_size": 32,
                        "snapshot_epochs": [], "cpu": args.cpu}}  # fmt: skip
    runs = [train(manifest, work / "one", params, 1, "no" if args.cpu else "bf16")]
    if gpus >= 2:
        runs.append(train(manifest, work / "two", params, 2, "bf16"))
    report = {
        "device": torch.cuda.get_device_name(0) if gpus else platform.processor() or "cpu",
        "gpus": gpus, "torch": torch.__version__, "python": platform.python_version(),
        "runs": runs,
        "two_processes": "run" if gpus >= 2 else "not run: one GPU (NCCL takes a device a rank)",
        "ok": all(r["returncode"] == 0 and r.get("val_mean_class_error", 100) < 50 for r in runs),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
