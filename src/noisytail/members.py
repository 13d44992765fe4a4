"""The members side by side: each step's val and test metrics, and the rule that picks the best
member (on val, always: test is only reported)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from noisytail.config.members import METRICS_ROOT, STEPS


def ranked_on_val(val_errors: Mapping[str, float]) -> list[str]:
    """Members from the lowest validation mean class error up (ties: in the given order): the
    one rule for "the best member", wherever one is picked."""
    return sorted(val_errors, key=lambda name: val_errors[name])


def read_member_metrics(names: list[str], root: Path = METRICS_ROOT) -> list[dict]:
    """One row per member and step: val and test mean class error, top-1, many / medium / few."""
    rows = []
    for name in names:
        for step in STEPS:
            path = root / name / f"{step}.json"
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: has member {name}'s {step} step run?")
            found = json.loads(path.read_text())
            row = {"member": name, "step": step, "recipe": found["recipe"],
                   "image_size": found["image_size"],
                   "start": found.get("start", STEPS[STEPS.index(step) - 1] if step != "full"
                                      else None)}  # fmt: skip
            for split in ("val", "test"):  # data without a test split: val only
                row.update({f"{split}_{k}": v for k, v in found.get(split, {}).items()})
            rows.append(row)
    return rows


def members_summary(rows: list[dict]) -> dict:
    """The final step of each member, the best of them (chosen on val, reported on test) and
    the smallest few-class accuracy gain of the balance step over the model it started from."""
    by_step = {(r["member"], r["step"]): r for r in rows}
    members = sorted({r["member"] for r in rows})
    final = {m: by_step[m, STEPS[-1]] for m in members}
    best = ranked_on_val({m: final[m]["val_mean_class_error"] for m in members})[0]
    nan = float("nan")  # no few-shot classes: no gain to report
    gains = {m: final[m].get("test_few_accuracy", nan)
             - by_step[m, final[m].get("start") or STEPS[-2]].get("test_few_accuracy", nan)
             for m in members}  # fmt: skip
    return {
        "members": len(members),
        "best_member": best,
        "best_member_test_mean_class_error": final[best].get("test_mean_class_error", nan),
        "final_test_mean_class_error": {
            m: final[m].get("test_mean_class_error", nan) for m in members
        },  # fmt: skip
        "few_accuracy_gain": gains,
        "few_accuracy_gain_min": min((g for g in gains.values() if g == g), default=nan),
    }
