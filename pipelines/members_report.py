"""DVC stage `members`: every member side by side, as a table, a plot and one MLflow parent run.

Writes metrics/members.json (the best member's val and test: the DVC metric),
metrics/members_summary.json, metrics/members.csv (one row per member and step) and
metrics/members.png; opens a `members` MLflow run and nests each member's run under it, so the
MLflow UI compares the members of this `dvc repro` side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from noisytail.config.members import STEPS, member_plan
from noisytail.config.params import load_checked_params
from noisytail.errors import report_expected_errors
from noisytail.members import members_summary, read_member_metrics
from noisytail.plots import member_steps
from noisytail.tracking import RunTracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="metrics/members.json")
    parser.add_argument("--plot", default="metrics/members.png")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    names = list(params.get("members") or {})
    rows = read_member_metrics(names)
    summary = members_summary(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    best = next(r for r in rows if r["member"] == summary["best_member"] and r["step"] == STEPS[-1])
    scored = {split: {k[len(split) + 1 :]: v for k, v in best.items() if k.startswith(f"{split}_")}
              for split in ("val", "test")}  # fmt: skip
    Path(args.out).write_text(json.dumps(scored, indent=1))  # the DVC metric: the best member
    Path(args.out).with_name("members_summary.json").write_text(json.dumps(summary, indent=1))
    pd.DataFrame(rows).to_csv(Path(args.out).with_suffix(".csv"), index=False)
    member_steps(args.plot, rows, STEPS)

    print(f"{'member':<16} {'step':<8} {'size':>4} {'val MCE':>8} {'test MCE':>9} "
          f"{'many':>6} {'medium':>7} {'few':>6}")  # fmt: skip
    nan = float("nan")  # a group (many / medium / few) without classes has no accuracy
    for r in rows:
        print(f"{r['member']:<16} {r['step']:<8} {r['image_size']:>4} "
              f"{r['val_mean_class_error']:>8.2f} {r.get('test_mean_class_error', nan):>9.2f} "
              f"{r.get('test_many_accuracy', nan):>6.1f} "
              f"{r.get('test_medium_accuracy', nan):>7.1f} "
              f"{r.get('test_few_accuracy', nan):>6.1f}")  # fmt: skip
    print(
        f"best on val: {summary['best_member']} "
        f"(test MCE {summary['best_member_test_mean_class_error']:.2f})"
    )

    run_files = [member_plan(params, name).step_dir("full") / "member_run_id" for name in names]
    tracking = params.get("tracking") or {}
    tags = {"kind": "members", "best_member": summary["best_member"]}
    parent = RunTracker(tracking.get("experiment", "noisytail"), "members",
                        uri=tracking.get("uri", ""), tags=tags)  # fmt: skip
    parent.adopt([f.read_text().strip() for f in run_files if f.is_file()])
    # each member's run holds its own figures (one chart, a bar per member, in the UI); the
    # parent only the best member's
    parent.log_metrics({k: v for k, v in best.items() if k.startswith(("val_", "test_"))})
    parent.log_artifact(args.out)
    parent.log_artifact(args.plot)
    parent.end()


if __name__ == "__main__":
    report_expected_errors(main)
