"""The ensemble members on FMNIST-LT-N, from the pipeline's own metrics (`dvc repro`).

One row per member and step (full, + hi-res, + cRT or balanced subset): val and test mean class
error, many / medium / few test accuracy. Beside them: the last cleaning round's model
(metrics/round_<last>.json, trained on the previous round's data) and the plain timm recipe on
the noisy labels (benchmarks/results/baseline.json, the run's benchmark `seed`; seed 0 writes
members.json, seed s members_seed<s>.json). Goals checked: the balance step improves few-class
accuracy for every member; the best member (chosen on val) beats the last round's model; every
member beats the plain recipe.

    make run                       # trains the members (dvc repro)
    python benchmarks/members.py   # reads metrics/, writes benchmarks/results/members.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, print_table, write_result

from noisytail.config import load_params
from noisytail.members import members_summary, read_member_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--wall-seconds", type=float, default=None,
                        help="the measured `make run` time, recorded with the figures")  # fmt: skip
    args = parser.parse_args()

    params = load_params(args.params)
    rows = read_member_metrics(list(params["members"]))
    summary = members_summary(rows)
    last_round = params["cleaning"]["rounds"][-1]["round"]
    last = json.loads(Path(f"metrics/round_{last_round}.json").read_text())["test"]
    seed = int(params["seed"])
    baseline = json.loads((RESULTS / "baseline.json").read_text())["summary"][str(seed)]
    finals = summary["final_test_mean_class_error"]
    summary["few_accuracy_gain"] = {m: round(g, 2) for m, g in summary["few_accuracy_gain"].items()}
    summary["few_accuracy_gain_min"] = round(summary["few_accuracy_gain_min"], 2)
    summary.update({
        "best_member": summary.pop("best_member_test_mean_class_error"),
        "best_member_name": summary["best_member"],
        "last_round_model": last["mean_class_error"],
        "plain_noisy": baseline["plain_noisy"],
        "plain_noisy_source": f"benchmarks/results/baseline.json (seed {seed}, same data, budget)",
        "goal_balance_improves_few_every_member": summary["few_accuracy_gain_min"] > 0,
        "goal_best_member_beats_last_round": min(finals.values()) < last["mean_class_error"]
        and finals[summary["best_member"]] < last["mean_class_error"],
        "goal_every_member_beats_plain_noisy": max(finals.values()) < baseline["plain_noisy"],
        "make_run_seconds": args.wall_seconds,
    })  # fmt: skip

    table = [
        {"member": r["member"], "step": r["step"], "size": r["image_size"],
         "val_mce": round(r["val_mean_class_error"], 2),
         "test_mce": round(r["test_mean_class_error"], 2),
         **{g: round(r.get(f"test_{g}_accuracy", float("nan")), 1)
            for g in ("many", "medium", "few")}}
        for r in rows
    ]  # fmt: skip
    print_table(table)
    print(f"last round's model {summary['last_round_model']:.2f}, plain noisy "
          f"{summary['plain_noisy']:.2f}, best member (on val) {summary['best_member_name']} "
          f"{summary['best_member']:.2f}")  # fmt: skip
    write_result("members" if seed == 0 else f"members_seed{seed}", table, summary=summary,
                 seed=seed)  # fmt: skip


if __name__ == "__main__":
    main()
