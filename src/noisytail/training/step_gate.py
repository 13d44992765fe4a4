"""Where a member's balance step starts: a step that makes val worse is not built on.

The seed fine-tunes at high resolution, then re-balances the classifier of that model. Where
the hi-res step raised the validation error (on FMNIST's 28 px images, enlarging costs points;
on a user's 300 px photos at 64 -> 96 it cost 6), the balance step starts from the full step's
model instead, at its image size. Chosen on val only, and recorded in the balance step's metrics.
"""

from __future__ import annotations

import json
from pathlib import Path

from noisytail.config.members import METRICS_ROOT, MemberPlan


def balance_start(plan: MemberPlan, root: Path = METRICS_ROOT) -> tuple[str, dict[str, float]]:
    """The step the balance step starts from, and the val mean class errors it was chosen by:
    ``hires`` unless its val error is above ``full``'s (a step that makes val worse is not built
    on; ties keep the seed's order)."""
    errors = {}
    for step in ("full", "hires"):
        path = plan.metrics_path(step, root)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: has member {plan.name}'s {step} step run?")
        errors[step] = json.loads(path.read_text())["val"]["mean_class_error"]
    return ("full" if errors["hires"] > errors["full"] else "hires"), errors
