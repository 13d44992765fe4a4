"""DVC stage `prepare`: import the data source into a validated manifest, summary and plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    if params["data"].get("source", "fmnist_lt_n") != "fmnist_lt_n":
        (out / "images" / "README.txt").write_text(
            "Your images stay where they are; manifest.parquet points at them.\n"
        )
    manifest, summary = prepare(data, benchmark, out, seed=params.get("seed", 0))

    write_manifest(manifest, out / "manifest.parquet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    series = {"given label": list(summary["train_per_class"].values())}
    if "clean_per_class" in summary:
        series = {"clean (true label)": list(summary["clean_per_class"].values()), **series}
    class_distribution(out / "class_distribution.png", manifest.classes, series)
    rows = ["class,given" + (",clean,noisy" if "clean_per_class" in summary else "")]
    for name in manifest.classes:
        row = f"{name},{summary['train_per_class'][name]}"
        if "clean_per_class" in summary:
            row += f",{summary['clean_per_class'][name]},{summary['noisy_per_class'][name]}"
        rows.append(row)
    (out / "class_counts.csv").write_text("\n".join(rows) + "\n")

    print(f"{manifest.num_classes} classes, splits {summary['split_sizes']}")
    if "noise_rate" in summary:
        print(f"noisy labels: {summary['noisy_labels']} ({100 * summary['noise_rate']:.2f}%)")
    print(
        f"{'class':<14}{'given':>7}"
        + (f"{'clean':>7}{'noisy':>7}" if "noise_rate" in summary else "")
    )
    for line in rows[1:]:
        name, *counts = line.rsplit(",", 3 if "noise_rate" in summary else 1)
        print(f"{name:<14}" + "".join(f"{c:>7}" for c in counts))


if __name__ == "__main__":
    report_expected_errors(main)
