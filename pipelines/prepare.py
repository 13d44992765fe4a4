"""DVC stage `prepare`: import the data source into a validated manifest, summary and plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from noisytail.config import from_mapping
from noisytail.config.data import BenchmarkConfig, DataConfig
from noisytail.config.params import load_checked_params
from noisytail.data.manifest import write_manifest
from noisytail.data.prepare import prepare
from noisytail.errors import report_expected_errors
from noisytail.plots import class_distribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/prepared")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    data = from_mapping(DataConfig, params.get("data"), "data")
    benchmark = from_mapping(BenchmarkConfig, params.get("benchmark"), "benchmark")
    out = Path(args.out)
    # DVC output even for user data, whose images stay where they are (only FMNIST writes here):
    # a note keeps it from being an empty folder, which DVC warns about on every run.
    (out / "images").mkdir(parents=True, exist_ok=True)
    if params["data"].get("source", "fmnist_lt_n") not in ("fmnist_lt_n", "sku_lt_n"):
        (out / "images" / "README.txt").write_text(
            "Your images stay where they are; manifest.parquet points at them.\n"
        )
    manifest, summary, per_class = prepare(data, benchmark, out, seed=params.get("seed", 0))

    write_manifest(manifest, out / "manifest.parquet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))  # a DVC metric: a handful
    per_class.to_csv(out / "class_counts.csv", index=False)  # the per-class detail: a table
    series = {"given label": per_class["given"].to_numpy()}
    if "clean" in per_class:
        series = {"clean (true label)": per_class["clean"].to_numpy(), **series}
    class_distribution(out / "class_distribution.png", manifest.classes, series)

    print(f"{manifest.num_classes} classes, splits {summary['split_sizes']}")
    if "noise_rate" in summary:
        print(f"noisy labels: {summary['noisy_labels']} ({100 * summary['noise_rate']:.2f}%)")
    shown = per_class.sort_values("given", ascending=False, kind="stable")
    if len(shown) > 20:  # thousands of classes: the head and the tail
        print(
            f"the 10 largest and the 10 smallest of {len(shown)} classes "
            f"({out / 'class_counts.csv'} has them all):"
        )
        shown = pd.concat([shown.head(10), shown.tail(10)])
    print(shown.to_string(index=False))


if __name__ == "__main__":
    report_expected_errors(main)
