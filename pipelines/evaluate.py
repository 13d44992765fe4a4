"""DVC stage `evaluate`: test metrics of a model (mean class error, top-1, many/medium/few)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from noisytail.config import load_params
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import eval_transform
from noisytail.metrics import classification_report
from noisytail.models.network import load_network
from noisytail.prediction import predict_top_k
from noisytail.training.engine import TrainConfig, make_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True, help="the prepared manifest (test split)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="metrics JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    train = load_params(args.params).get("train") or {}
    manifest = read_manifest(args.manifest)
    split = args.split
    if not (manifest.table["split"] == split).any():
        print(f"{args.manifest} has no {split!r} split: evaluating on 'val'")
        split = "val"
    model, _ = load_network(args.model)
    size, channels = train.get("image_size", 32), model.config.in_chans
    dataset = ImageDataset.from_manifest(manifest, split, eval_transform(size, channels),
                                         channels=channels)  # fmt: skip
    accelerator = make_accelerator(TrainConfig(mixed_precision=train.get("mixed_precision", "no")))
    table = predict_top_k(model, dataset, accelerator, top_k=1, workers=train.get("workers", 2))
    # many / medium / few by the clean training count where the truth is known (benchmarks)
    column = "true_label" if "true_label" in manifest.table else "label"
    report = classification_report(
        np.stack(table["topk_index"])[:, 0],
        dataset.labels.numpy(),
        manifest.num_classes,
        manifest.class_counts("train", column).to_numpy(),
    )
    if accelerator.is_main_process:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        metrics = {"split": split, **{k: round(v, 3) for k, v in report.items()}}
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        print(f"{args.model} on {split}: " + ", ".join(f"{k} {v:.2f}" for k, v in report.items()))


if __name__ == "__main__":
    main()
