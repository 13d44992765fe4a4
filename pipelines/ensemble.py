"""DVC stage `ensemble`: the members as tuned (tuned.yaml) and their weighted top-10 ensemble,
on val and test: metrics/ensemble_rows.csv (every row below), metrics/ensemble.json (the
tuned ensemble's figures per split), predictions.csv (test top-5) and per-class accuracy against
training frequency (metrics/ensemble_per_class.png).

Rows per member: as trained (bias, centre view), + tau, + tau and TTA; then the ensemble with
equal weights and with the tuned weights. Every choice was made on val (pipelines/tune.py);
test is only reported.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from noisytail.config import from_mapping, load_params
from noisytail.config.params import load_checked_params
from noisytail.config.test_time import TTAConfig, TuningConfig
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.members import ranked_on_val
from noisytail.metrics import classification_report, per_class_recall
from noisytail.plots import accuracy_by_frequency
from noisytail.test_time.cache import cleaned_val, load_views, select_rows
from noisytail.test_time.scoring import ensemble_rows, headline, rows_table

PREPARED = "data/prepared/manifest.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", default="data/test_time")
    parser.add_argument("--tuned", default="tuned.yaml")
    parser.add_argument("--metrics", default="metrics/ensemble.json")
    parser.add_argument("--rows", default="metrics/ensemble_rows.csv")
    parser.add_argument("--predictions", default="predictions.csv")
    parser.add_argument("--plot", default="metrics/ensemble_per_class.png")
    parser.add_argument(
        "--val-decisions",
        default="",
        help="the last cleaning round's val_decisions.parquet (val_cleaned rows)",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    tuned = load_params(args.tuned)["members"]
    scales = from_mapping(TTAConfig, params.get("test_time"), "test_time").scales
    top = from_mapping(TuningConfig, params.get("tuning"), "tuning").top
    manifest = read_manifest(PREPARED)
    counts = manifest.class_counts("train", "true_label" if manifest.fully_verified else "label")
    names = list(tuned)
    stored = {m: load_views(Path(args.views) / m, scales) for m in names}  # read once
    first = stored[names[0]][f"{scales[0]:g}"]
    splits = {s: first["split"] == s for s in ("val", "test") if (first["split"] == s).any()}
    if "test" not in splits:
        print("no test split: the ensemble is scored on val only, and predictions.csv holds val")
    kept = cleaned_val(args.val_decisions, first["sample_id"][splits["val"]])
    if not kept.all():  # a val cut from the given labels: also scored on what cleaning kept
        val_rows = np.flatnonzero(splits["val"])
        splits["val_cleaned"] = np.isin(np.arange(len(first["split"])), val_rows[kept])
    report, per_class, lists = {}, {}, {}
    for split, rows_of_split in splits.items():
        views = {m: {s: select_rows(c, rows_of_split) for s, c in stored[m].items()}
                 for m in names}  # fmt: skip
        labels = first["label"][rows_of_split]
        rows, lists[split] = ensemble_rows(views, tuned, f"{scales[0]:g}", top)
        for row, index in rows.items():
            report.setdefault(row, {})[split] = {k: round(v, 3) for k, v in classification_report(
                index[:, 0], labels, manifest.num_classes, counts.to_numpy()).items()}  # fmt: skip
            per_class[split, row] = 100 * per_class_recall(index[:, 0], labels,
                                                           manifest.num_classes)  # fmt: skip

    shown = "test" if "test" in splits else "val"  # the split predictions.csv and the plot show
    index, prob = lists[shown]
    table = pd.DataFrame({"sample_id": first["sample_id"][splits[shown]], "split": shown})
    class_names = np.array([*manifest.classes, ""], dtype=object)  # index -1 (no class): ""
    for rank in range(5):
        table[f"class_{rank + 1}"] = class_names[index[:, rank]]
        table[f"prob_{rank + 1}"] = np.round(prob[:, rank], 5)
    table.to_csv(args.predictions, index=False)
    chosen_on = "val_cleaned" if "val_cleaned" in splits else "val"  # where tuning chose
    best = ranked_on_val({m: report[f"{m}/tau+tta"][chosen_on]["mean_class_error"]
                          for m in names})[0]  # fmt: skip
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(headline(report), indent=1))
    rows_table(report).to_csv(args.rows, index=False)
    accuracy_by_frequency(args.plot, manifest.classes, counts.to_numpy(), {
        f"{best} as trained": per_class[shown, f"{best}/as_trained"],
        f"{best} + tau + TTA": per_class[shown, f"{best}/tau+tta"],
        "ensemble": per_class[shown, "ensemble"],
    }, split=shown)  # fmt: skip
    for row, scored in report.items():
        print(f"{row:<32} " + "  ".join(f"{split} {m['mean_class_error']:6.2f}"
                                        for split, m in scored.items()))  # fmt: skip
    print(yaml.safe_dump({"weights": {m: tuned[m]["weight"] for m in names}}).strip())


if __name__ == "__main__":
    report_expected_errors(main)
