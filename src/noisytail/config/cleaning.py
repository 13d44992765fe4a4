"""``cleaning:`` in params.yaml: the typed settings of a round, and a round's own overrides.

Decisions read only the given labels and the stored top-k predictions, never ``true_label``
(``cleaning.reports`` is the one place that compares them with the truth).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from noisytail.config import ConfigError, check_choice, check_range, from_mapping

RULES = ("top1", "label_prob", "lowest_fraction")


PREDICTION_SOURCES = ("in_sample", "early", "out_of_fold")


JUDGES = ("all", "kept")


@dataclass(frozen=True)
class CleaningConfig:
    """``cleaning:`` in params.yaml (``rounds`` is read by dvc.yaml, not here)."""

    rule: str = "label_prob"  # top1 | label_prob | lowest_fraction
    threshold: float = 0.8  # top1 / label_prob: drop disagreeing samples scoring below it
    fraction: float = 0.5  # lowest_fraction: drop this share of the disagreeing samples
    per_class: bool = True  # score relative to the mean score of the sample's class (CL)
    prior_correction: float = 0.5  # divide probabilities by class prior ** this (0: off)
    min_per_class: int = 5  # a class never drops below this many samples
    relabel_threshold: float = 1.01  # disagreeing, prediction prob >= this: relabel (> 1: off)
    predictions: str = "in_sample"  # in_sample | early | out_of_fold
    early_epoch: int = 6  # predictions: early -> the checkpoint of this epoch
    folds: int = 2  # predictions: out_of_fold -> this many fold models
    judge: str = "all"  # all: every original training sample, each round | kept: the round's
    neighbours: int = 30  # mix the labels of this many nearest neighbours into the evidence
    neighbour_weight: float = 0.5  # their share of the mixed probabilities (0: softmax only)
    neighbour_index: str = "auto"  # exact | faiss (IVF, approximate) | auto: faiss from
    neighbour_index_threshold: int = 200_000  # this many samples (per fold model) up
    nprobe: int = 16  # faiss: inverted lists searched per query (recall against speed)
    neighbour_refinement: int = 4  # faiss: rounds of NN-descent local joins after (0: off)
    min_val_gain: float = 1.0  # clean only if the val MCE is this far below chance's (0: off)

    def __post_init__(self) -> None:
        check_choice("cleaning.rule", self.rule, RULES)
        check_choice("cleaning.predictions", self.predictions, PREDICTION_SOURCES)
        check_choice("cleaning.judge", self.judge, JUDGES)
        for name in ("threshold", "fraction", "neighbour_weight"):
            check_range(f"cleaning.{name}", getattr(self, name), 0.0, 1.0)
        non_negative = ("prior_correction", "min_per_class", "neighbours", "relabel_threshold",
                        "min_val_gain")  # fmt: skip
        for name in non_negative:
            check_range(f"cleaning.{name}", getattr(self, name), 0)
        check_range("cleaning.folds", self.folds, 2)
        check_range("cleaning.early_epoch", self.early_epoch, 1)
        check_choice("cleaning.neighbour_index", self.neighbour_index, SEARCHES)
        check_range("cleaning.nprobe", self.nprobe, 1)
        check_range("cleaning.neighbour_refinement", self.neighbour_refinement, 0)

    @property
    def uses_neighbours(self) -> bool:
        """Whether the verdict mixes in neighbours' labels (so needs the embeddings)."""
        return self.neighbours > 0 and self.neighbour_weight > 0


def round_config(section: Mapping | None, round_number: int | str = "") -> CleaningConfig:
    """One round's cleaning settings: ``cleaning:`` of params.yaml, updated with whatever the
    round's entry of ``cleaning.rounds`` sets besides round / input / output (a schedule: e.g.
    aggressive early rounds that train the next model on cleaner data, a conservative last one
    whose output is the dataset you keep)."""
    section = dict(section or {})
    rounds = section.pop("rounds", None) or []
    if round_number not in ("", None):
        entry = next((r for r in rounds if str(r.get("round")) == str(round_number)), None)
        if entry is None:
            raise ConfigError(f"cleaning.rounds has no entry for round {round_number}")
        overrides = {k: v for k, v in entry.items() if k not in ("round", "input", "output")}
        unknown = sorted(set(overrides) - {f.name for f in fields(CleaningConfig)})
        if unknown:
            raise ConfigError(f"cleaning.rounds, round {round_number}: unknown parameter(s) "
                              f"{unknown}")  # fmt: skip
        section.update(overrides)
    return from_mapping(CleaningConfig, section, "cleaning")


SEARCHES = ("auto", "exact", "faiss")
