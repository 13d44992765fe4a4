"""DVC stage `tune`: Optuna studies on validation: tau per member, then its TTA scale and mode,
then the ensemble weights. Writes the best values to tuned.yaml (read by the `ensemble` stage).

Studies are stored in `tuning.storage` (default sqlite:///optuna.db) under names that carry a
digest of their inputs: re-running on the same predictions loads the finished studies instead of
repeating them; new predictions get new studies. `optuna-dashboard sqlite:///optuna.db` shows them.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import yaml

from noisytail.config import from_mapping
from noisytail.config.params import load_checked_params
from noisytail.config.test_time import TTAConfig, TuningConfig
from noisytail.errors import report_expected_errors
from noisytail.test_time.cache import load_views, tta_top_k
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
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    config = from_mapping(TuningConfig, params.get("tuning"), "tuning")
    scales = from_mapping(TTAConfig, params.get("test_time"), "test_time").scales
    names = list(params.get("members") or {})
    views = {m: load_views(Path(args.views) / m, scales, split="val") for m in names}
    num_classes = len(next(iter(views[names[0]].values()))["norm"])
    labels = next(iter(views[names[0]].values()))["label"]
    files = sorted(Path(args.views).glob("*/scale_*.npz"))
    key = digest(files, config)

    tracking = params.get("tracking") or {}
    run = RunTracker(tracking.get("experiment", "noisytail"), "tune", uri=tracking.get("uri", ""),
                     tags={"kind": "tuning", "optuna_storage": config.storage})  # fmt: skip
    run.log_params({"tuning": vars(config) | {"inputs": key}, "scales": list(scales)})

    study_runs = GroupedChildRuns()  # tune -> one run per study -> one run per trial

    def log_trial(study: str, number: int, trial_params: dict, value: float) -> None:
        study_runs.log(study, f"trial_{number}", trial_params, {"val_mean_class_error": value})

    tuned: dict = {"members": {}, "studies": {"storage": config.storage, "inputs": key}}
    for name in names:
        plain = views[name][f"{scales[0]:g}"]
        tau = tune_tau(f"{name}/tau/{key}", plain, num_classes, config, log_trial)
        scale, mode = tune_tta(f"{name}/tta/{key}", views[name], tau, num_classes, config,
                               log_trial)  # fmt: skip
        tuned["members"][name] = {"tau": round(float(tau), 4), "scale": float(scale),
                                  "mode": mode}  # fmt: skip
        print(f"{name}: tau {tau:.3f}, TTA {mode} at scale {scale}")
    member_lists = [
        tta_top_k(views[m][f"{tuned['members'][m]['scale']:g}"], tuned["members"][m]["tau"],
                  tuned["members"][m]["mode"], config.top)
        for m in names
    ]  # fmt: skip
    weights = tune_weights(f"ensemble/weights/{key}", member_lists, labels, num_classes, config,
                           log_trial)  # fmt: skip
    study_runs.close()
    for name, weight in zip(names, weights):
        tuned["members"][name]["weight"] = round(float(weight), 4)
    print("weights: " + ", ".join(f"{m} {w:.3f}" for m, w in zip(names, weights)))
    run.log_metrics({f"{m}.{k}": v for m, t in tuned["members"].items()
                     for k, v in t.items() if k != "mode"})  # fmt: skip
    header = "# Written by `dvc repro tune` (pipelines/tune.py): the best values on validation.\n"
    partial = Path(args.out).with_name(f"partial_{Path(args.out).name}")
    partial.write_text(header + yaml.safe_dump(tuned, sort_keys=False))
    partial.replace(args.out)
    run.log_artifact(args.out)
    run.end()


if __name__ == "__main__":
    report_expected_errors(main)
