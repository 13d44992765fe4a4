"""DVC stage `train`: run one recipe (full, hires, crt, balanced_subset) under Accelerate.

    accelerate launch pipelines/train.py --recipe full --manifest M --out models/X

The `train:` section of params.yaml is the base config; `--section hires` (or crt, ...) overlays
that section on it. Re-running the same command resumes from the last epoch checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from noisytail.config import from_mapping
from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.params import load_checked_params
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.tracking import RunTracker
from noisytail.training.engine import make_accelerator
from noisytail.training.recipes import claim_recipe_dir, recipe_fingerprint, run_tracked_recipe


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
    seed = params.get("seed", 0)
    fingerprint = recipe_fingerprint(recipe, model_config, train_config, augment, manifest, seed)
    claim_recipe_dir(args.out, fingerprint, accelerator)  # before the tracker reads its run id
    tracker = RunTracker(
        tracking.get("experiment", "noisytail"), args.run_name or Path(args.out).name,
        uri=tracking.get("uri", ""), enabled=accelerator.is_main_process,
        tags={"recipe": args.recipe, "dvc_round": args.round},
        resume_file=Path(args.out) / "mlflow_run_id",
    )  # fmt: skip
    run_tracked_recipe(
        recipe, model_config, train_config, augment, manifest, args.out, seed=seed,
        tracker=tracker, accelerator=accelerator, fingerprint=fingerprint,
        dataset=(args.manifest, f"{Path(args.manifest).parent.name}/train", args.round),
    )  # fmt: skip
    tracker.end()


if __name__ == "__main__":
    report_expected_errors(main)
