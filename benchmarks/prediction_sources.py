"""Where should cleaning's predictions come from? One cleaning round on FMNIST-LT-N, the same rule,
with predictions from the model's own training set (in-sample, the seed), an early snapshot, and
k-fold cross-fitted models (out-of-fold); detection against the truth, beside cleanlab's.

    python benchmarks/prediction_sources.py [--work outputs/cleaning]   # reuses round_1/
"""

from __future__ import annotations

import argparse
from pathlib import Path

from accelerate import Accelerator
from cleaning_rounds import cleanlab_detection
from common import print_table, write_result

from noisytail.cleaning.out_of_fold import out_of_fold_predictions
from noisytail.cleaning.rules import detection_report, judge_predictions, round_config
from noisytail.config import from_mapping, load_params
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import AugmentConfig, eval_transform
from noisytail.models.network import ModelConfig, load_network
from noisytail.prediction import predict_top_k
from noisytail.training.engine import TrainConfig
from noisytail.training.recipes import RecipeConfig, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.parquet")
    parser.add_argument("--work", default="outputs/cleaning")
    args = parser.parse_args()

    params = load_params()
    model_config = from_mapping(ModelConfig, params["model"], "model")
    train_config = from_mapping(TrainConfig, params["train"], "train")
    augment = AugmentConfig.from_params(params.get("augment"))
    cleaning = round_config(params["cleaning"], 1)  # round 1: the model of the noisy labels
    seed, work = params.get("seed", 0), Path(args.work)
    manifest = read_manifest(args.manifest)
    train = manifest.split("train")
    truth = train["true_label"].to_numpy()
    accelerator = Accelerator(cpu=True)
    run_recipe(RecipeConfig(), model_config, train_config, augment, manifest, work / "round_1",
               seed=seed, accelerator=accelerator)  # fmt: skip

    transform = eval_transform(train_config.image_size, model_config.in_chans, augment)
    dataset = ImageDataset(train, manifest.image_root, transform, channels=model_config.in_chans)
    sources = {}
    for snapshot in sorted((work / "round_1").glob("model_epoch_*.safetensors")):
        model, _ = load_network(snapshot)
        epoch = snapshot.stem.rsplit("_", 1)[1]
        sources[f"early (epoch {epoch})"] = predict_top_k(
            model, dataset, accelerator, workers=2, with_embedding=True
        )
    model, _ = load_network(work / "round_1" / "model.safetensors")
    sources["in-sample (final)"] = predict_top_k(
        model, dataset, accelerator, workers=2, with_embedding=True
    )
    sources[f"out-of-fold ({cleaning.folds} folds)"] = out_of_fold_predictions(
        manifest, manifest, cleaning.folds, model_config, train_config, augment, work / "oof_1",
        seed=seed, accelerator=accelerator,
    )  # fmt: skip

    rows = []
    for name, predictions in sources.items():
        evidence, decided = judge_predictions(predictions, manifest.num_classes, cleaning)
        ours = detection_report(decided, truth, manifest.classes)
        theirs = cleanlab_detection(evidence, truth, manifest.num_classes)
        rows.append({
            "predictions": name, "precision": ours["precision"], "recall": ours["recall"],
            "f1": ours["f1"], "residual_noise": ours["residual_noise"],
            "clean_kept": ours["clean_kept_share"],
            "worst_class_clean_kept": ours["min_class_clean_kept_share"],
            "cleanlab_precision": theirs["precision"], "cleanlab_recall": theirs["recall"],
            "cleanlab_f1": theirs["f1"],
        })  # fmt: skip
    table = [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    print_table(table)
    write_result("prediction_sources", table, cleaning=cleaning.__dict__,
                 epochs=train_config.epochs, backbone=model_config.backbone)  # fmt: skip


if __name__ == "__main__":
    main()
