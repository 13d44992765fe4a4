"""Whether a round's model knows enough to clean with: its val error against chance's.

A cleaning rule drops the samples whose label the model's evidence disagrees with. A model that
classifies no better than chance disagrees with almost every label, right or wrong, so its
"suspects" are mostly clean samples: at 100k images x 50,030 classes a one-epoch model (val
mean class error 99.96, chance 99.998) dropped 21k samples at a precision of 0.28 against the
truth, where 15% of the labels were wrong (docs/results.md). On long-tailed data those clean
samples are often a class's only images.

So a round cleans only when its model's val mean class error is at least
``cleaning.min_val_gain`` points below chance's, ``100 * (1 - 1 / classes)``; otherwise the round
keeps its input unchanged and says why. The gain is read from the model's own record
(``done.json``: the val error of the epoch whose weights ``model.safetensors`` holds), so the
guard costs nothing and reads no truth. Without a val split there is nothing to judge by and the
round cleans as configured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd


def chance_mean_class_error(num_classes: int) -> float:
    """The expected mean class error (%) of a classifier that guesses uniformly."""
    return 100.0 * (1.0 - 1.0 / max(num_classes, 1))


def selected_val_error(done_file: str | Path) -> float | None:
    """The val mean class error of the epoch a training run kept (``selected_epoch`` of its
    ``done.json``), or None for a run without a val split."""
    done_file = Path(done_file)
    if not done_file.is_file():
        raise FileNotFoundError(f"{done_file}: no finished training run there (run its train "
                                f"stage first)")  # fmt: skip
    done = json.loads(done_file.read_text())
    history = done.get("history") or []
    chosen = int(done.get("selected_epoch") or len(history))
    if not history or not 1 <= chosen <= len(history):
        return None
    error = history[chosen - 1].get("val_mean_class_error")
    return None if error is None else float(error)


@dataclass(frozen=True)
class EvidenceCheck:
    """A round's model against chance: does the round clean?"""

    val_mean_class_error: float | None
    chance_mean_class_error: float
    min_val_gain: float

    @property
    def gain(self) -> float | None:
        """Points of val mean class error below chance's (None without val)."""
        if self.val_mean_class_error is None:
            return None
        return self.chance_mean_class_error - self.val_mean_class_error

    @property
    def cleans(self) -> bool:
        """True unless the model's val error is measured and too near chance."""
        return self.gain is None or self.gain >= self.min_val_gain

    def report(self) -> dict:
        """The check's figures and verdict, for report_full.json."""
        return {**asdict(self), "gain": self.gain, "cleans": self.cleans}

    def explain(self, round_name: str) -> str:
        """One line for the log: what was measured and what the round does."""
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


def check_evidence(done_file: str | Path, num_classes: int, min_val_gain: float) -> EvidenceCheck:
    """Read a round model's val error and compare it with chance's for ``num_classes``."""
    return EvidenceCheck(selected_val_error(done_file), chance_mean_class_error(num_classes),
                         float(min_val_gain))  # fmt: skip


def keep_round_input(decided: pd.DataFrame, round_train: pd.DataFrame) -> pd.DataFrame:
    """Decisions that leave the round's input as it was: its training samples kept with the
    labels they have there, any other judged sample (``judge: all``: dropped by an earlier
    round) dropped. The scores stay, for the report and the galleries."""
    labels = round_train.set_index("sample_id")["label"]
    current = decided["sample_id"].map(labels)
    inside = current.notna().to_numpy()
    out = decided.copy()
    out["action"] = np.where(inside, "keep", "drop")
    out["new_label"] = current.where(inside, out["label"]).astype("int64").to_numpy()
    return out
