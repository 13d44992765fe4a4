"""DVC stage `evaluate`: a model's val and test metrics (mean class error, top-1, many / medium /
few), on whichever of the two the manifest has."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from noisytail.config.data import AugmentConfig
from noisytail.config.params import load_checked_params
from noisytail.config.training import TrainConfig
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.models.network import load_network
from noisytail.prediction import check_classes, evaluate_splits, model_view
from noisytail.training.engine import make_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--manifest", required=True, help="the prepared manifest (val, test)")
    parser.add_argument("--out", required=True, help="metrics JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    train = params.get("train") or {}
    manifest = read_manifest(args.manifest)
    model, classes = load_network(args.model)
    check_classes(classes, manifest, args.model)
    # the size and crop the model was trained at (a hi-res model is scored at its own size)
    size, view = model_view(model, train.get("image_size", 32),
                            AugmentConfig.from_params(params.get("augment")))  # fmt: skip
    accelerator = make_accelerator(TrainConfig(mixed_precision=train.get("mixed_precision", "no")))
    metrics = evaluate_splits(model, manifest, size, accelerator, workers=train.get("workers", 2),
                              augment=view)  # fmt: skip
    if accelerator.is_main_process:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        for split, report in metrics.items():
            print(f"{args.model} on {split}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in report.items()))  # fmt: skip


if __name__ == "__main__":
    report_expected_errors(main)
