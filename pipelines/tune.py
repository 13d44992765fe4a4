"""DVC stage `tune`: Optuna studies on validation: tau per member, then its TTA scale and mode,
then the ensemble weights; each kept only where it beats the plain value (no tau, the centre
view, equal weights) by more than the noise of val. Writes tuned.yaml (read by `ensemble`).

Studies are stored in `tuning.storage` (default sqlite:///optuna.db) under names that carry a
digest of their inputs: re-running on the same predictions loads the finished studies instead of
repeating them; new predictions get new studies. `optuna-dashboard sqlite:///optuna.db` shows them.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd
import yaml

from noisytail.config import from_mapping
from noisytail.config.params import load_checked_params
from noisytail.config.test_time import TTAConfig, TuningConfig
from noisytail.errors import report_expected_errors
from noisytail.metrics import coverage_by_group
from noisytail.test_time.cache import cleaned_val, load_views, moved_into_top, select_rows
from noisytail.test_time.scoring import member_top_k
from noisytail.test_time.tuning import tune_tau, tune_tta, tune_weights
from noisytail.tracking import GroupedChildRuns, RunTracker


def digest(paths: list[Path], config: TuningConfig) -> str:
    text = hashlib.sha256(repr(config).encode())
    for path in paths:  # streamed: a cache at scale is gigabytes
        with open(path, "rb") as file:
            text.update(hashlib.file_digest(file, "sha256").digest())
    return text.hexdigest()[:10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", default="data/test_time")
    parser.add_argument("--out", default="tuned.yaml")
    parser.add_argument(
        "--val-decisions",
        default="",
        help="the last cleaning round's val_decisions.parquet: tune on the val "
        "samples it keeps (a val cut from the given labels, cleaned)",
    )
    parser.add_argument(
        "--class-counts",
        default="data/prepared/class_counts.csv",
        help="training images per class (prepare): val's coverage of the tail",
    )
    parser.add_argument(
        "--min-val-images",
        type=int,
        default=20,
        help="warn when a many / medium / few group has fewer val images",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    config = from_mapping(TuningConfig, params.get("tuning"), "tuning")
    scales = from_mapping(TTAConfig, params.get("test_time"), "test_time").scales
    names = list(params.get("members") or {})
    views = {m: load_views(Path(args.views) / m, scales, split="val") for m in names}
    val_ids = next(iter(views[names[0]].values()))["sample_id"]
    kept = cleaned_val(args.val_decisions, val_ids)
    views = {m: {s: select_rows(c, kept) for s, c in v.items()} for m, v in views.items()}
    print(
        f"tuning on {int(kept.sum())} of {len(kept)} val samples"
        + (" (the rest judged mislabelled by the last cleaning round)" if not kept.all() else "")
    )
    num_classes = len(next(iter(views[names[0]].values()))["norm"])
    labels = next(iter(views[names[0]].values()))["label"]
    counts = pd.read_csv(args.class_counts)["given"].to_numpy()
    coverage = coverage_by_group(labels, counts)
    for group, covered in coverage.items():
        print(f"  val, {group} classes: {covered['images']} images of {covered['classes']} of "
              f"{covered['of_classes']} classes")  # fmt: skip
        if covered["images"] < args.min_val_images:
            print(f"warning: val has {covered['images']} images of {group} classes (fewer than "
                  f"{args.min_val_images}): tau, TTA and the weights are tuned with them barely "
                  f"seen; give more val images of those classes")  # fmt: skip
    files = sorted(Path(args.views).glob("*/scale_*.npz"))
    key = digest(files, config)

    tracking = params.get("tracking") or {}
    run = RunTracker(tracking.get("experiment", "noisytail"), "tune", uri=tracking.get("uri", ""),
                     tags={"kind": "tuning", "optuna_storage": config.storage})  # fmt: skip
    run.log_params({"tuning": vars(config) | {"inputs": key}, "scales": list(scales)})

    study_runs = GroupedChildRuns()  # tune -> one run per study -> one run per trial

    def log_trial(study: str, number: int, trial_params: dict, value: float) -> None:
        study_runs.log(study, f"trial_{number}", trial_params, {"val_mean_class_error": value})

    tuned: dict = {"members": {}, "decisions": {}, "val": {"samples": len(kept),
                   "tuned_on": int(kept.sum()), "by_group": coverage},
                   "studies": {"storage": config.storage, "inputs": key}}  # fmt: skip
    for name in names:
        plain = views[name][f"{scales[0]:g}"]
        tau = tune_tau(f"{name}/tau/{key}", plain, num_classes, config, log_trial)
        tta = tune_tta(f"{name}/tta/{key}", views[name], tau.value, num_classes, config,
                       log_trial)  # fmt: skip
        scale, mode = tta.value
        tuned["members"][name] = {"tau": tau.value, "scale": float(scale), "mode": mode}
        # classes a cache of only the top would miss: at the tau used, and at the best trial's
        moved = moved_into_top(plain, tau.value, config.top)
        moved_at_tuned = moved_into_top(plain, tau.tuned, config.top)
        tuned["decisions"][name] = {"tau": tau.record(), "tta": tta.record(),
                                    "tau_moved_in": round(moved, 4),
                                    "tau_moved_in_at_tuned": round(moved_at_tuned, 4)}  # fmt: skip
        print(
            f"{name}: tau {tau.value} (best trial {tau.tuned}: {tau.comparison.describe()}); "
            f"TTA {mode} at scale {scale} (best {tta.tuned}: {tta.comparison.describe()})"
        )
    member_lists = [member_top_k(views[m], tuned["members"][m], config.top) for m in names]
    weights = tune_weights(f"ensemble/weights/{key}", member_lists, labels, num_classes, config,
                           log_trial)  # fmt: skip
    study_runs.close()
    for name, weight in zip(names, weights.value):
        tuned["members"][name]["weight"] = round(float(weight), 4)
    tuned["decisions"]["weights"] = {**weights.record(),
                                     "tuned": [round(w, 4) for w in weights.tuned],
                                     "plain": [round(w, 4) for w in weights.plain]}  # fmt: skip
    print(
        f"weights: {'tuned' if weights.comparison.candidate_wins else 'equal'} "
        f"({weights.comparison.describe()})"
    )
    run.log_metrics({f"{m}.{k}": v for m, t in tuned["members"].items()
                     for k, v in t.items() if isinstance(v, (int, float))})  # fmt: skip
    header = ("# Written by `dvc repro tune` (pipelines/tune.py): per member tau (null: the "
              "classifier as trained), TTA and weight, each kept only where it won on val by "
              "more than the noise (decisions).\n")  # fmt: skip
    partial = Path(args.out).with_name(f"partial_{Path(args.out).name}")
    partial.write_text(header + yaml.safe_dump(tuned, sort_keys=False))
    partial.replace(args.out)
    run.log_artifact(args.out)
    run.end()


if __name__ == "__main__":
    report_expected_errors(main)
