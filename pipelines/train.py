"""DVC stage `train`: run one recipe (full, hires, crt, balanced_subset) under Accelerate.

    accelerate launch pipelines/train.py --recipe full --manifest M --out models/X

The `train:` section of params.yaml is the base config; `--section hires` (or crt, ...) overlays
that section on it. Re-running the same command resumes from the last epoch checkpoint.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from noisytail.config import from_mapping
from noisytail.data.manifest import manifest_digest, read_manifest
from noisytail.data.transforms import AugmentConfig
from noisytail.errors import report_expected_errors
from noisytail.models.network import ModelConfig
from noisytail.params import load_checked_params
from noisytail.tracking import RunTracker
from noisytail.training.engine import TrainConfig, make_accelerator
from noisytail.training.recipes import RecipeConfig, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="full", help="full | hires | crt | balanced_subset")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--out", required=True, help="folder for checkpoints and model.safetensors")
    parser.add_argument("--init", default="", help="model.safetensors to start from")
    parser.add_argument("--confidences", default="", help="predictions parquet (balanced_subset)")
    parser.add_argument("--section", default="", help="params section overlaid on `train:`")
    parser.add_argument("--run-name", default="")
    parser.add_argument("--round", default="", help="the DVC cleaning round of the manifest")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    train_params = dict(params.get("train") or {})
    if args.section:
        train_params.update(params.get(args.section) or {})
    train_config = from_mapping(TrainConfig, train_params, f"train+{args.section}".rstrip("+"))
    model_config = from_mapping(ModelConfig, params.get("model"), "model")
    augment = AugmentConfig.from_params(params.get("augment"))
    subset = (params.get("balanced_subset") or {}).get("per_class", 30)
    recipe = RecipeConfig(args.recipe, args.init, subset, args.confidences)
    tracking = params.get("tracking") or {}
    manifest = read_manifest(args.manifest, required_splits=("train", "val"))

    accelerator = make_accelerator(train_config)
    tracker = RunTracker(
        tracking.get("experiment", "noisytail"), args.run_name or Path(args.out).name,
        uri=tracking.get("uri", ""), enabled=accelerator.is_main_process,
        tags={"recipe": args.recipe, "dvc_round": args.round},
        resume_file=Path(args.out) / "mlflow_run_id",
    )  # fmt: skip
    tracker.log_params({"recipe": asdict(recipe), "model": asdict(model_config),
                        "train": asdict(train_config), "augment": asdict(augment),
                        "seed": params.get("seed", 0), "manifest": args.manifest,
                        "num_processes": accelerator.num_processes})  # fmt: skip
    train_rows = manifest.split("train")
    tracker.log_dataset(
        train_rows, args.manifest, f"{Path(args.manifest).parent.name}/train",
        manifest_digest(train_rows), args.round,
    )  # fmt: skip
    try:
        result = run_recipe(
            recipe, model_config, train_config, augment, manifest, args.out,
            seed=params.get("seed", 0), tracker=tracker, accelerator=accelerator,
        )  # fmt: skip
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.log_metrics({f"final_{k}": v for k, v in result["final"].items() if k != "epoch"})
    tracker.log_artifact(Path(args.out) / "model.safetensors", "model")
    tracker.log_artifact(Path(args.out) / "model.json", "model")
    tracker.end()


if __name__ == "__main__":
    report_expected_errors(main)
