"""What relabelling could do, read from a finished run's cleaning decisions (truth-only).

    python benchmarks/relabel_candidates.py [--run DIR] [--thresholds 0.5 0.6 0.7 0.8 0.9]

Per cleaning round and threshold t: the judged samples that ``cleaning.relabel_threshold: t``
would relabel (the prediction disagrees with the given label at confidence >= t, the round's own
scores), how many of those it would fix (the prediction is the true label), how many clean labels
it would break, and the share of the round's wrong labels it would fix (``dropped_in_run``: how
many of them the run dropped instead). The run itself need not relabel (every profile has it off,
1.01): its decisions hold the scores. A benchmark's report on the truth, not a choice: the
threshold is chosen on val, by `cleaning_rounds.py --variants relabel_0.5 relabel_0.7`.

A first-order estimate: rounds after the first were judged by models trained without relabels,
and the class floor (which counts kept samples by their new label) may give back other drops. A
round the chance guard held back (its report's ``evidence.cleans`` false) would relabel nothing
and is reported as such. Relabelling applies to a val cut from the given labels too (a relabelled
val sample is left out of tuning); this report counts training samples only. Meant for a run
that did not relabel: in one that did, with ``judge: kept``, a round's ``label`` is the label an
earlier round gave, not the given one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import yaml
from common import print_table, write_result


def candidates(decisions: pd.DataFrame, true_label: np.ndarray, threshold: float) -> dict:
    """What relabelling at ``threshold`` would change in one round's decisions."""
    label, pred = decisions["label"].to_numpy(), decisions["pred"].to_numpy()
    chosen = (pred != label) & (decisions["confidence"].to_numpy() >= threshold)
    wrong = label != true_label
    fixed = int((chosen & (pred == true_label)).sum())
    return {
        "relabelled": int(chosen.sum()),
        "fixed": fixed,
        "clean_broken": int((chosen & ~wrong).sum()),
        "still_wrong": int((chosen & wrong & (pred != true_label)).sum()),
        "relabel_precision": round(fixed / chosen.sum(), 4) if chosen.any() else None,
        "wrong_labels": int(wrong.sum()),
        "wrong_fixed_share": round(fixed / wrong.sum(), 4) if wrong.any() else None,
        "dropped_in_run": int((chosen & (decisions["action"].to_numpy() == "drop")).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("."), help="a finished run's folder")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.5, 0.6, 0.7, 0.8, 0.9])  # fmt: skip
    parser.add_argument("--name", default="relabel_candidates", help="results/<name>.json")
    args = parser.parse_args()

    params = yaml.safe_load((args.run / "params.yaml").read_text())
    manifest_file = args.run / "data/prepared/manifest.parquet"
    if "true_label" not in pq.ParquetFile(manifest_file).schema_arrow.names:
        raise SystemExit(f"{manifest_file}: no true_label column (a benchmark run is needed)")
    manifest = pd.read_parquet(manifest_file, columns=["sample_id", "true_label"])
    if manifest["true_label"].lt(0).all():
        raise SystemExit(f"{manifest_file}: no sample has a true label")
    truth = manifest.set_index("sample_id")["true_label"]
    rows = []
    for entry in params["cleaning"]["rounds"]:
        path = args.run / entry["output"] / "decisions.parquet"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: has round {entry['round']} been cleaned?")
        decisions = pd.read_parquet(path)
        true_label = truth.reindex(decisions["sample_id"]).to_numpy()
        if pd.isna(true_label).any():
            raise SystemExit(f"{path}: {int(pd.isna(true_label).sum())} samples are not in "
                             f"{manifest_file}")  # fmt: skip
        known = true_label >= 0  # unverified samples (-1) do not count
        report = json.loads((path.parent / "report_full.json").read_text())
        cleans = report.get("evidence", {}).get("cleans", True)  # runs before the guard: cleaned
        for threshold in args.thresholds:
            at = threshold if cleans else float("inf")  # a guarded round relabels nothing
            found = candidates(decisions[known], true_label[known], at)
            rows.append({"round": entry["round"], "threshold": threshold, "cleaned": cleans,
                         **found})  # fmt: skip
    print_table(rows)
    write_result(args.name, rows, run=str(args.run.resolve()), seed=params.get("seed"),
                 profile_backbone=params["model"]["backbone"])  # fmt: skip


if __name__ == "__main__":
    main()
