"""Iterative cleaning on FMNIST-LT-N, measured against the truth, beside CE-noisy and CE-oracle.

Per round: detection precision / recall / F1 of the dropped set (and cleanlab's
find_label_issues on the very same probabilities: the evidence the rule decides on), residual
noise of the kept set, clean samples kept (overall and the worst class, since the first round),
and the test mean class error of the model trained on that round's data. CE-noisy is the model
trained on the noisy labels (round 1's model); CE-oracle the same samples with their true labels,
same recipe and budget. The plain timm recipe of benchmarks/baseline.py, trained on the noisy
labels in the same run, is the honest baseline that cleaning must beat.

    pip install -r benchmarks/requirements.txt   # cleanlab
    python benchmarks/cleaning_rounds.py [--rounds 3] [--epochs 12] [--work outputs/cleaning]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from accelerate import Accelerator
from baseline import plain_recipe
from common import print_table, write_result

from noisytail.cleaning import (
    clean_retention,
    cleaned_manifest,
    detection_report,
    judge_predictions,
    judged_samples,
    round_config,
)
from noisytail.config import from_mapping, load_params
from noisytail.data.manifest import Manifest, read_manifest
from noisytail.data.transforms import AugmentConfig
from noisytail.models.network import ModelConfig, load_network
from noisytail.prediction import evaluate_split, top_k_arrays, write_predictions
from noisytail.training.crossfit import cleaning_predictions
from noisytail.training.engine import TrainConfig
from noisytail.training.recipes import RecipeConfig, run_recipe


def probability_matrix(predictions: pd.DataFrame, num_classes: int) -> np.ndarray:
    """N x C from stored top-k (exact when k = C; otherwise the rest shares the leftover mass)."""
    index, prob = top_k_arrays(predictions)
    full = np.zeros((len(index), num_classes))
    leftover = np.clip(1 - prob.sum(1, keepdims=True), 0, None) / max(
        num_classes - index.shape[1], 1
    )
    full += leftover
    np.put_along_axis(full, index, prob, axis=1)
    return full / full.sum(1, keepdims=True)


def cleanlab_detection(predictions: pd.DataFrame, true_label: np.ndarray, num_classes: int) -> dict:
    from cleanlab.filter import find_label_issues

    labels = predictions["label"].to_numpy()
    issues = find_label_issues(labels, probability_matrix(predictions, num_classes))
    noisy = labels != true_label
    hit = int((issues & noisy).sum())
    precision, recall = hit / max(int(issues.sum()), 1), hit / max(int(noisy.sum()), 1)
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12)}  # fmt: skip


def test_report(model_file: Path, manifest: Manifest, size: int, augment: AugmentConfig) -> dict:
    """Test metrics at the training geometry (the same object scale as in training)."""
    model, _ = load_network(model_file)
    return evaluate_split(model, manifest, "test", size, Accelerator(cpu=True), augment=augment)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.parquet")
    parser.add_argument("--rounds", type=int, default=0, help="0: as many as cleaning.rounds")
    parser.add_argument("--epochs", type=int, default=0, help="0: params.yaml train.epochs")
    parser.add_argument("--work", default="outputs/cleaning", help="models and predictions")
    parser.add_argument("--name", default="cleaning_rounds", help="results/<name>.json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override params.yaml, e.g. --set cleaning.threshold=0.5",
    )
    args = parser.parse_args()

    params = load_params()
    for override in args.set:  # values parsed as YAML: 0.5 -> float, true -> bool
        key, value = override.split("=", 1)
        section, name = key.split(".", 1)
        params[section][name] = yaml.safe_load(value)
    model_config = from_mapping(ModelConfig, params["model"], "model")
    train_config = from_mapping(TrainConfig, params["train"], "train")
    if args.epochs:
        train_config = replace(train_config, epochs=args.epochs)
    augment = AugmentConfig.from_params(params.get("augment"))
    rounds = args.rounds or len(params["cleaning"]["rounds"])
    settings = {r: round_config(params["cleaning"], r) for r in range(1, rounds + 1)}
    seed, work, size = params.get("seed", 0), Path(args.work), train_config.image_size
    accelerator = Accelerator(cpu=True)

    def train(manifest: Manifest, name: str) -> dict:
        run_recipe(RecipeConfig(), model_config, train_config, augment, manifest, work / name,
                   seed=seed, accelerator=accelerator)  # fmt: skip
        return test_report(work / name / "model.safetensors", original, size, augment)

    original = read_manifest(args.manifest)
    oracle_table = original.table.assign(label=original.table["true_label"])
    rows = [{"model": "CE-oracle", **train(original.with_table(oracle_table), "ce_oracle")}]
    rows.append({"model": "CE-noisy", **train(original, "round_1")})
    plain, _ = plain_recipe(original, train_config.epochs, seed)
    rows.append({"model": "plain recipe (noisy labels)", **plain})
    print_table(rows)

    manifest, reports = original, []
    for r in range(1, rounds + 1):
        cleaning = settings[r]
        judged = judged_samples(cleaning, manifest, original)
        predictions = cleaning_predictions(
            manifest, judged, cleaning, work / f"round_{r}", model_config, train_config, augment,
            work / f"oof_{r}", seed=seed, accelerator=accelerator,
        )  # fmt: skip
        write_predictions(predictions, work / f"round_{r}" / "cleaning_predictions.parquet")
        truth = judged.split("train")["true_label"].to_numpy()
        evidence, decided = judge_predictions(predictions, manifest.num_classes, cleaning)
        detection = detection_report(decided, truth, manifest.classes)
        manifest = cleaned_manifest(judged, decided)
        retention = clean_retention(manifest.split("train"), original.split("train"),
                                    manifest.classes)  # fmt: skip
        cleanlab = cleanlab_detection(evidence, truth, manifest.num_classes)
        test = train(manifest, f"round_{r + 1}")
        reports.append({"round": r, "detection": detection, "retention": retention,
                        "cleanlab": cleanlab, "test_after": test})  # fmt: skip
        rows.append({
            "model": f"round {r} data", **test,
            "precision": detection["precision"], "recall": detection["recall"],
            "f1": detection["f1"], "cleanlab_f1": cleanlab["f1"],
            "residual_noise": detection["residual_noise"],
            "clean_kept": retention["clean_kept_share"],
            "worst_class_clean_kept": retention["min_class_clean_kept_share"],
        })  # fmt: skip
        print_table(
            [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in rows[-1].items()}]
        )

    table = [
        {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()} for row in rows
    ]
    print()
    print_table([{k: row.get(k, "") for k in table[-1]} for row in table])
    last = reports[-1]["test_after"]["mean_class_error"] if reports else float("nan")
    summary = {
        "plain_noisy": round(plain["mean_class_error"], 2),
        "ce_noisy": rows[1]["mean_class_error"],
        "ce_oracle": rows[0]["mean_class_error"],
        "last_round": round(last, 2),
        "gain_over_plain": round(plain["mean_class_error"] - last, 2),
    }
    print(summary)
    write_result(args.name, table, summary=summary, overrides=args.set,
                 cleaning={r: c.__dict__ for r, c in settings.items()},
                 epochs=train_config.epochs,
                 backbone=model_config.backbone, rounds=reports)  # fmt: skip
    (work / "rounds.json").write_text(json.dumps(reports, indent=1))


if __name__ == "__main__":
    main()
