"""DVC stage `predict`: a model's top-k predictions for one split of a manifest (parquet).

accelerate launch pipelines/predict.py --model M --manifest X --split train --out P
"""

from __future__ import annotations

import argparse
from pathlib import Path

from noisytail.cleaning.predictions import cleaning_predictions, val_predictions
from noisytail.cleaning.rules import judged_samples
from noisytail.config import from_mapping
from noisytail.config.cleaning import round_config
from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.params import load_checked_params
from noisytail.config.training import TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import ManifestError, read_manifest
from noisytail.data.transforms import eval_transform
from noisytail.errors import report_expected_errors
from noisytail.models.network import load_network
from noisytail.prediction import model_view, predict_top_k, write_predictions
from noisytail.training.engine import make_accelerator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="model.safetensors, or a training folder")
    parser.add_argument(
        "--for-cleaning",
        action="store_true",
        help="predictions as params cleaning.predictions says: in_sample (the "
        "final model), early (its early_epoch snapshot), out_of_fold (k models)",
    )
    parser.add_argument("--manifest", required=True, help="the manifest the model trained on")
    parser.add_argument(
        "--original",
        default="",
        help="--for-cleaning with cleaning.judge "
        "all: the manifest before the first round, whose samples are judged",
    )
    parser.add_argument("--round", default="", help="--for-cleaning: the round (its settings)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="predictions parquet")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--embedding", action="store_true", help="also store the embedding")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    train = params.get("train") or {}
    manifest = read_manifest(args.manifest)
    augment = AugmentConfig.from_params(params.get("augment"))
    accelerator = make_accelerator(TrainConfig(mixed_precision=train.get("mixed_precision", "no")))
    if args.for_cleaning:  # --model is the round's training folder
        cleaning = round_config(params.get("cleaning"), args.round)
        original = read_manifest(args.original) if args.original else manifest
        judged = judged_samples(cleaning, manifest, original)
        table = cleaning_predictions(
            manifest, judged, cleaning, args.model,
            from_mapping(ModelConfig, params.get("model"), "model"),
            from_mapping(TrainConfig, train, "train"),
            augment, Path(args.out).parent / "folds",
            seed=params.get("seed", 0), top_k=args.top_k, accelerator=accelerator,
        )  # fmt: skip
        # a val cut from the given labels is judged too (pipelines/clean.py: a cleaned val)
        val = val_predictions(original, args.model, from_mapping(TrainConfig, train, "train"),
                              augment, top_k=args.top_k, accelerator=accelerator)  # fmt: skip
        if val is not None and accelerator.is_main_process:
            write_predictions(val, Path(args.out).with_name("val.parquet"))
    else:
        weights = Path(args.model)
        if weights.is_dir():
            weights /= "model.safetensors"
        model, classes = load_network(weights)
        if classes != manifest.classes:
            raise ManifestError(f"{weights} was trained on other classes than {args.manifest} has")
        size, view = model_view(model, train.get("image_size", 32), augment)
        channels = model.config.in_chans
        dataset = ImageDataset.from_manifest(
            manifest, args.split, eval_transform(size, channels, view), channels=channels
        )
        table = predict_top_k(
            model, dataset, accelerator, top_k=args.top_k,
            batch_size=2 * train.get("batch_size", 128), workers=train.get("workers", 2),
            with_embedding=args.embedding,
        )  # fmt: skip
    if accelerator.is_main_process:
        write_predictions(table, args.out)
        print(f"{len(table)} {args.split} samples predicted -> {args.out}")


if __name__ == "__main__":
    report_expected_errors(main)
