"""DVC stage `ensemble`: the members as tuned (tuned.yaml) and their weighted top-10 ensemble,
on val and test: metrics/ensemble.json, predictions.csv (test top-5) and per-class accuracy
against training frequency (metrics/ensemble_per_class.png).

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
from noisytail.config.test_time import TTAConfig
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.members import ranked_on_val
from noisytail.metrics import classification_report, per_class_recall
from noisytail.plots import accuracy_by_frequency
from noisytail.test_time.cache import load_views, split_rows
from noisytail.test_time.scoring import ensemble_rows

PREPARED = "data/prepared/manifest.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--views", default="data/test_time")
    parser.add_argument("--tuned", default="tuned.yaml")
    parser.add_argument("--metrics", default="metrics/ensemble.json")
    parser.add_argument("--predictions", default="predictions.csv")
    parser.add_argument("--plot", default="metrics/ensemble_per_class.png")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    tuned = load_params(args.tuned)["members"]
    scales = from_mapping(TTAConfig, params.get("test_time"), "test_time").scales
    top = (params.get("tuning") or {}).get("top", 10)
    manifest = read_manifest(PREPARED)
    counts = manifest.class_counts("train", "true_label" if manifest.fully_verified else "label")
    names = list(tuned)
    stored = {m: load_views(Path(args.views) / m, scales) for m in names}  # read once
    report, per_class, lists, sample_ids = {}, {}, {}, None
    for split in ("val", "test"):
        views = {m: {s: split_rows(c, split) for s, c in stored[m].items()} for m in names}
        sample_ids = next(iter(views[names[0]].values()))["sample_id"]
        labels = next(iter(views[names[0]].values()))["label"]
        rows, lists[split] = ensemble_rows(views, tuned, f"{scales[0]:g}", top)
        for row, index in rows.items():
            report.setdefault(row, {})[split] = {k: round(v, 3) for k, v in classification_report(
                index[:, 0], labels, manifest.num_classes, counts.to_numpy()).items()}  # fmt: skip
            if split == "test":
                per_class[row] = 100 * per_class_recall(index[:, 0], labels, manifest.num_classes)

    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(report, indent=1))
    index, prob = lists["test"]
    table = pd.DataFrame({"sample_id": sample_ids})  # the test split's, the loop's last
    for rank in range(5):
        table[f"class_{rank + 1}"] = [manifest.classes[c] if c >= 0 else "" for c in index[:, rank]]
        table[f"prob_{rank + 1}"] = np.round(prob[:, rank], 5)
    table.to_csv(args.predictions, index=False)
    best = ranked_on_val({m: report[f"{m}/tau+tta"]["val"]["mean_class_error"] for m in names})[0]
    accuracy_by_frequency(args.plot, manifest.classes, counts.to_numpy(), {
        f"{best} as trained": per_class[f"{best}/as_trained"],
        f"{best} + tau + TTA": per_class[f"{best}/tau+tta"], "ensemble": per_class["ensemble"],
    })  # fmt: skip
    for row, splits in report.items():
        print(f"{row:<32} val {splits['val']['mean_class_error']:6.2f}  "
              f"test {splits['test']['mean_class_error']:6.2f}")  # fmt: skip
    print(yaml.safe_dump({"weights": {m: tuned[m]["weight"] for m in names}}).strip())


if __name__ == "__main__":
    report_expected_errors(main)
