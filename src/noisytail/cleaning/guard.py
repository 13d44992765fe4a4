"""Whether a round's model knows enough to clean with: its val error against chance's.

A cleaning rule drops the samples whose label the model's evidence disagrees with. A model that
classifies no better than chance disagrees with almost every label, right or wrong, so its
"suspects" are mostly clean samples: at 100k images x 50,030 classes a one-epoch model (val
mean class error 99.96, chance 99.998) dropped 21k samples at a precision of 0.28 against the
truth, where 15% of the labels were wrong (docs/results.md). On long-tailed data those clean
samples are often a class's only images.

So a round cleans only when the model whose predictions it cleans with has a val mean class
error at least ``cleaning.min_val_gain`` points below chance's, ``100 * (1 - 1 / classes)`` over
the classes val holds (a model that always answers one class scores exactly that); otherwise the
round keeps its input unchanged and says why. The error is read from the training runs' own
records (``done.json``): the epoch whose weights predicted (the selected one, or
``early_epoch`` for ``predictions: early``), the worst fold model for ``out_of_fold``. The guard
reads no truth and costs nothing. Without a val error there is nothing to judge by and the round
cleans as configured; ``min_val_gain: 0`` switches the guard off.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from noisytail.cleaning.rules import unjudged_val
from noisytail.config.cleaning import CleaningConfig


def chance_mean_class_error(num_classes: int) -> float:
    """The mean class error (%) of guessing: uniformly among ``num_classes``, or always one."""
    return 100.0 * (1.0 - 1.0 / max(num_classes, 1))


def val_error_at(done_file: str | Path, epoch: int | None = None) -> float | None:
    """The val mean class error after ``epoch`` (1-based; default the run's ``selected_epoch``)
    of a training run's ``done.json``, or None for a run without a val split."""
    done_file = Path(done_file)
    if not done_file.is_file():
        raise FileNotFoundError(f"{done_file}: no finished training run there (run its train "
                                f"stage first)")  # fmt: skip
    done = json.loads(done_file.read_text())
    history = done.get("history") or []
    chosen = int(epoch or done.get("selected_epoch") or len(history))
    if not history:
        return None
    if not 1 <= chosen <= len(history):
        raise ValueError(f"{done_file} has {len(history)} epochs, not epoch {chosen} "
                         f"(cleaning.early_epoch?)")  # fmt: skip
    error = history[chosen - 1].get("val_mean_class_error")
    return None if error is None else float(error)


def evidence_runs(
    config: CleaningConfig, model_dir: str | Path, predictions_dir: str | Path
) -> list[tuple[Path, int | None]]:
    """The training runs (``done.json``) whose weights predicted what the round cleans with,
    each with the epoch they predicted at (None: the selected one)."""
    if config.predictions == "early":
        return [(Path(model_dir) / "done.json", config.early_epoch)]
    if config.predictions == "out_of_fold":
        folds = [Path(predictions_dir) / "folds" / f"fold_{k}" / "done.json"
                 for k in range(config.folds)]  # fmt: skip
        return [(fold, None) for fold in folds]
    return [(Path(model_dir) / "done.json", None)]


@dataclass(frozen=True)
class EvidenceCheck:
    """A round's model against chance: does the round clean?"""

    val_mean_class_error: float | None  # the worst of the models that predicted
    chance_mean_class_error: float
    min_val_gain: float  # 0: the guard is off

    @property
    def gain(self) -> float | None:
        """Points of val mean class error below chance's (None without val)."""
        if self.val_mean_class_error is None:
            return None
        return self.chance_mean_class_error - self.val_mean_class_error

    @property
    def cleans(self) -> bool:
        """True unless the guard is on and the model's val error is measured and too near
        chance's (or above it)."""
        return self.min_val_gain <= 0 or self.gain is None or self.gain >= self.min_val_gain

    def report(self) -> dict:
        """The check's figures and verdict, for report_full.json."""
        return {**asdict(self), "gain": self.gain, "cleans": self.cleans}

    def explain(self, round_name: str) -> str:
        """One line for the log: what was measured and what the round does."""
        if self.min_val_gain <= 0:
            return f"round {round_name}: cleaning.min_val_gain 0, the chance guard is off"
        if self.gain is None:
            return (f"round {round_name}: no val error to judge the model by; cleaning as "
                    f"configured")  # fmt: skip
        verdict = ("cleans" if self.cleans else
                   "keeps its input unchanged: its disagreement cannot tell a wrong label "
                   "from a right one")  # fmt: skip
        error, chance = self.val_mean_class_error, self.chance_mean_class_error
        return (f"round {round_name}: the model's val mean class error {error:.3f} is "
                f"{self.gain:.3f} points below chance's {chance:.3f} "
                f"(cleaning.min_val_gain {self.min_val_gain:g}): the round {verdict}")  # fmt: skip


def check_evidence(
    runs: list[tuple[Path, int | None]], val_classes: int, min_val_gain: float
) -> EvidenceCheck:
    """Read the val error of each run that predicted (the worst counts) and compare it with
    chance's over the ``val_classes`` classes val holds."""
    errors = [val_error_at(done, epoch) for done, epoch in runs]
    measured = [e for e in errors if e is not None]
    worst = max(measured) if measured and len(measured) == len(errors) else None
    return EvidenceCheck(worst, chance_mean_class_error(val_classes), float(min_val_gain))


def keep_round_input(decided: pd.DataFrame, round_train: pd.DataFrame) -> pd.DataFrame:
    """Decisions that leave the round's input as it was: its training samples kept with the
    labels they have there (``relabel`` where an earlier round changed it), any other judged
    sample (``judge: all``: dropped by an earlier round) dropped. So a guarded round reports,
    like any ``judge: all`` round, its decisions against the original labels. The scores stay,
    for the report and the galleries."""
    labels = round_train.set_index("sample_id")["label"]
    current = decided["sample_id"].map(labels)
    inside = current.notna().to_numpy()
    out = decided.copy()
    new_label = current.where(inside, out["label"]).astype("int64").to_numpy()
    changed = new_label != out["label"].to_numpy()
    out["action"] = np.where(~inside, "drop", np.where(changed, "relabel", "keep"))
    out["new_label"] = new_label
    return out


def carried_val_decisions(previous: str | Path, val: pd.DataFrame) -> pd.DataFrame:
    """A guarded round's val decisions: the previous round's (``previous``, its
    ``val_decisions.parquet``; tuning reads the last round's), or every val sample kept and not
    judged where there is none (round 1, or a val of the data's own)."""
    decided = unjudged_val(val)
    if Path(previous).is_file():
        before = pd.read_parquet(previous, columns=["sample_id", "judged", "action"])
        before = before.set_index("sample_id")
        ids = decided["sample_id"]
        decided["judged"] = ids.map(before["judged"]).fillna(False).astype(bool).to_numpy()
        decided["action"] = ids.map(before["action"]).fillna("keep").to_numpy()
    return decided
