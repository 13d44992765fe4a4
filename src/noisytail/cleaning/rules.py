"""Cleaning: score each training sample by a model's predictions, then keep, drop or relabel it.

Decisions read only the given labels and the stored top-k predictions, never ``true_label``;
``cleaning_report`` (benchmarks) is the one place that compares them with the truth.

The score can be *prior-corrected*: on long-tailed data a model trained on the noisy labels
over-predicts the head classes, so the clean samples of a tail class look like head-class samples
and a global rule strips them. Dividing each class's probability by its training prior
(``prior_correction`` = 1, as in logit adjustment) asks instead "which class is this, all classes
being equally likely?", and cleaning and rebalancing are decided together.

Two more choices decide how well rounds work on long-tailed data (benchmarks/cleaning_rounds.py):
- ``judge: all``: every round judges every original training sample, not only the ones the
  previous round kept. A clean sample that a weak first model dropped is judged again by the
  better model of the next round, so losses do not compound from round to round;
- ``neighbours``: the evidence mixes the softmax with the labels of the sample's nearest
  neighbours in embedding space (``cleaning.neighbours``), a second opinion that a classifier
  which memorised a wrong label cannot give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import pandas as pd

from noisytail.cleaning.neighbours import SEARCHES, neighbour_smoothed
from noisytail.config import ConfigError, check_choice, check_range, from_mapping
from noisytail.data.manifest import Manifest

RULES = ("top1", "label_prob", "lowest_fraction")
PREDICTION_SOURCES = ("in_sample", "early", "out_of_fold")
JUDGES = ("all", "kept")


@dataclass(frozen=True)
class CleaningConfig:
    """``cleaning:`` in params.yaml (``rounds`` is read by dvc.yaml, not here)."""

    rule: str = "label_prob"  # top1 | label_prob | lowest_fraction
    threshold: float = 0.5  # top1 / label_prob: drop disagreeing samples scoring below it
    fraction: float = 0.5  # lowest_fraction: drop this share of the disagreeing samples
    per_class: bool = False  # score relative to the mean score of the sample's class (CL)
    prior_correction: float = 1.0  # divide probabilities by class prior ** this (0: off)
    min_per_class: int = 5  # a class never drops below this many samples
    relabel_threshold: float = 1.01  # disagreeing, prediction prob >= this: relabel (> 1: off)
    predictions: str = "in_sample"  # in_sample | early | out_of_fold
    early_epoch: int = 3  # predictions: early -> the checkpoint of this epoch
    folds: int = 2  # predictions: out_of_fold -> this many fold models
    judge: str = "all"  # all: every original training sample, each round | kept: the round's
    neighbours: int = 30  # mix the labels of this many nearest neighbours into the evidence
    neighbour_weight: float = 0.5  # their share of the mixed probabilities (0: softmax only)
    neighbour_index: str = "auto"  # exact | faiss (IVF, approximate) | auto: faiss from
    neighbour_index_threshold: int = 200_000  # this many samples (per fold model) up
    nprobe: int = 16  # faiss: inverted lists searched per query (recall against speed)
    neighbour_refinement: int = 4  # faiss: rounds of NN-descent local joins after (0: off)

    def __post_init__(self) -> None:
        check_choice("cleaning.rule", self.rule, RULES)
        check_choice("cleaning.predictions", self.predictions, PREDICTION_SOURCES)
        check_choice("cleaning.judge", self.judge, JUDGES)
        for name in ("threshold", "fraction", "neighbour_weight"):
            check_range(f"cleaning.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("prior_correction", "min_per_class", "neighbours", "relabel_threshold"):
            check_range(f"cleaning.{name}", getattr(self, name), 0)
        check_range("cleaning.folds", self.folds, 2)
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


def judged_samples(config: CleaningConfig, round_input: Manifest, original: Manifest) -> Manifest:
    """Whose labels a round judges: every sample of the original training set (``judge: all``),
    so that a clean sample dropped by an earlier, weaker model can come back, or only the round's
    own training samples (``judge: kept``: what was dropped stays dropped)."""
    if config.judge not in JUDGES:
        raise ValueError(f"cleaning.judge must be one of {JUDGES}, got {config.judge!r}")
    return original if config.judge == "all" else round_input


def scores(
    predictions: pd.DataFrame, num_classes: int, prior_correction: float = 0.0
) -> pd.DataFrame:
    """Per sample: ``pred``, ``confidence`` (its probability) and ``label_score`` (the given
    label's probability), optionally prior-corrected over the stored top-k plus the given label.
    """
    index = np.stack(predictions["topk_index"].to_numpy()).astype(np.int64)
    prob = np.stack(predictions["topk_prob"].to_numpy()).astype(np.float64)
    label = predictions["label"].to_numpy()
    label_prob = predictions["label_prob"].to_numpy().astype(np.float64)
    if prior_correction:
        prior = np.bincount(label, minlength=num_classes) / len(label)
        weight = np.maximum(prior, 1e-12) ** -prior_correction
        prob = prob * weight[index]
        label_prob = label_prob * weight[label]
        in_top_k = (index == label[:, None]).any(axis=1)
        total = prob.sum(axis=1) + np.where(in_top_k, 0.0, label_prob)
        prob, label_prob = prob / total[:, None], label_prob / total
    best = prob.argmax(axis=1)
    return pd.DataFrame({
        "sample_id": predictions["sample_id"].to_numpy(),
        "label": label,
        "pred": index[np.arange(len(index)), best],
        "confidence": prob[np.arange(len(prob)), best],
        "label_score": label_prob,
    })  # fmt: skip


def decide(scored: pd.DataFrame, config: CleaningConfig) -> pd.DataFrame:
    """Add ``action`` (keep / drop / relabel) and ``new_label`` to the scored samples."""
    if config.rule not in RULES:
        raise ValueError(f"cleaning.rule must be one of {RULES}, got {config.rule!r}")
    out = scored.copy()
    disagree = (out["pred"] != out["label"]).to_numpy()
    score = out["label_score"].to_numpy()
    if config.per_class:  # relative to the class's own mean (Confident Learning's threshold)
        score = score / out.groupby("label")["label_score"].transform("mean").to_numpy()
    if config.rule == "top1":
        suspect = disagree & (out["confidence"].to_numpy() < config.threshold)
    elif config.rule == "label_prob":
        suspect = disagree & (score < config.threshold)
    else:
        ranked = np.argsort(np.where(disagree, score, np.inf), kind="stable")
        suspect = np.zeros(len(out), dtype=bool)
        suspect[ranked[: int(round(config.fraction * disagree.sum()))]] = True
    relabel = disagree & (out["confidence"].to_numpy() >= config.relabel_threshold)
    action = np.where(relabel, "relabel", np.where(suspect, "drop", "keep"))
    new_label = np.where(relabel, out["pred"], out["label"])
    out["action"], out["new_label"] = action, new_label
    return apply_class_floor(out, config.min_per_class, score)


def judge_predictions(
    predictions: pd.DataFrame,
    num_classes: int,
    config: CleaningConfig,
    embeddings: np.ndarray | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One round's verdict: the evidence (the predictions mixed with the labels of each sample's
    neighbours by ``embeddings``, default the predictions' column) and the decisions on it."""
    evidence = neighbour_smoothed(
        predictions, config.neighbours, config.neighbour_weight, embeddings=embeddings,
        search=config.neighbour_index, threshold=config.neighbour_index_threshold,
        nprobe=config.nprobe, refinement=config.neighbour_refinement,
    )  # fmt: skip
    return evidence, decide(scores(evidence, num_classes, config.prior_correction), config)


def apply_class_floor(decided: pd.DataFrame, floor: int, score: np.ndarray) -> pd.DataFrame:
    """Give back the best-scored dropped samples of any class left with fewer than ``floor``."""
    out = decided.copy()
    kept = out.loc[out["action"] != "drop", "new_label"].value_counts()
    for label, rows in out[out["action"] == "drop"].groupby("label"):
        missing = floor - int(kept.get(label, 0))
        if missing > 0:
            best = rows.index[np.argsort(-score[rows.index], kind="stable")[:missing]]
            out.loc[best, "action"] = "keep"
    return out


def balanced_subset(rows: pd.DataFrame, confidence: np.ndarray, per_class: int) -> pd.DataFrame:
    """The ``per_class`` most confident rows of each class (all of a smaller one), in row order."""
    ranked = rows.assign(_confidence=np.asarray(confidence)).sort_values(
        ["label", "_confidence"], ascending=[True, False], kind="stable"
    )
    chosen = ranked.groupby("label", sort=False).head(per_class).index
    return rows.loc[sorted(chosen)].reset_index(drop=True)


def apply_decisions(train: pd.DataFrame, decided: pd.DataFrame) -> pd.DataFrame:
    """The cleaned training rows: dropped rows removed, relabelled rows given the new label.

    ``original_label`` keeps the label the sample had before the first round.
    """
    decision = decided.set_index("sample_id")
    rows = train.copy()
    if "original_label" not in rows:
        rows["original_label"] = rows["label"]
    action = rows["sample_id"].map(decision["action"])
    if action.isna().any():
        missing = rows.loc[action.isna(), "sample_id"].head(5).tolist()
        raise ValueError(f"no cleaning decision for training samples {missing} ...")
    rows["label"] = rows["sample_id"].map(decision["new_label"]).astype(np.int64)
    return rows[action.to_numpy() != "drop"].reset_index(drop=True)


def cleaned_manifest(manifest: Manifest, decided: pd.DataFrame) -> Manifest:
    """The next round's manifest: the cleaned training rows, the other splits unchanged."""
    others = manifest.table[manifest.table["split"] != "train"]
    others = others.assign(original_label=others.get("original_label", others["label"]))
    kept = apply_decisions(manifest.split("train"), decided)
    return manifest.with_table(pd.concat([kept, others], ignore_index=True))


def fold_assignment(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified folds: each class's samples, in a random order, dealt round-robin; the deal
    carries on from class to class so the folds also have equal sizes (within one)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, folds])
    fold = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    # each class's rows in index order, grouped by one stable sort (a mask per class would be
    # N x C work: minutes at 2.5M x 50k)
    by_class = np.argsort(labels, kind="stable")
    for members in np.split(by_class, np.flatnonzero(np.diff(labels[by_class])) + 1):
        members = rng.permutation(members)
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


def merge_out_of_fold(
    fold_predictions: list[pd.DataFrame], fold: np.ndarray, sample_ids: np.ndarray
) -> pd.DataFrame:
    """Join the fold models' predictions: each sample must come from the one model that held it
    out (``fold_predictions[k]`` predicts exactly the samples with ``fold == k``)."""
    position = {sid: i for i, sid in enumerate(sample_ids)}
    for k, table in enumerate(fold_predictions):
        where = np.array([position[s] for s in table["sample_id"]])
        if len(where) != int((fold == k).sum()) or np.any(fold[where] != k):
            raise ValueError(f"fold model {k} must predict exactly the samples of fold {k}")
    merged = pd.concat(fold_predictions, ignore_index=True)
    order = np.argsort([position[s] for s in merged["sample_id"]])
    return merged.iloc[order].reset_index(drop=True)


def decision_counts(decided: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """Kept / dropped / relabelled per class (by given label)."""
    counts = pd.crosstab(decided["label"], decided["action"]).reindex(
        index=range(len(classes)), columns=["keep", "drop", "relabel"], fill_value=0
    )
    counts.index = list(classes)
    return counts.rename(columns={"keep": "kept", "drop": "dropped", "relabel": "relabelled"})


def _share(numerator, denominator) -> float:
    return float(numerator) / float(denominator) if denominator else float("nan")


def detection_report(
    decided: pd.DataFrame, true_label: np.ndarray, classes: tuple[str, ...]
) -> dict:
    """Benchmarks only: one round's decisions against the truth, overall and per class.

    - precision / recall / F1 of the dropped set against the noise mask (label != true label);
    - residual noise of what is kept (after relabelling);
    - clean samples lost, and the share of clean samples kept.
    """
    label, new_label = decided["label"].to_numpy(), decided["new_label"].to_numpy()
    noisy = label != true_label
    dropped = decided["action"].to_numpy() == "drop"
    kept = ~dropped
    hit = int((dropped & noisy).sum())
    precision = hit / max(int(dropped.sum()), 1)
    recall = hit / max(int(noisy.sum()), 1)
    report = {
        "samples": len(decided),
        "kept": int(kept.sum()),
        "dropped": int(dropped.sum()),
        "relabelled": int((decided["action"] == "relabel").sum()),
        "relabelled_correctly": int(
            ((decided["action"] == "relabel") & (new_label == true_label)).sum()
        ),  # fmt: skip
        "noise_rate_before": _share(noisy.sum(), len(noisy)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "residual_noise": _share((kept & (new_label != true_label)).sum(), kept.sum()),
        "clean_lost": int((dropped & ~noisy).sum()),
        "clean_kept_share": _share((kept & ~noisy).sum(), (~noisy).sum()),
    }
    # per class by counting (np.bincount), not by a mask per class: N x C work at 2.5M x 50k
    count = partial(np.bincount, minlength=len(classes))
    clean = ~noisy
    clean_here, clean_kept, clean_lost = (count(label[clean]), count(label[clean & kept]),
                                          count(label[clean & dropped]))  # fmt: skip
    kept_as = new_label[kept].astype(np.int64)
    kept_here, kept_wrong = count(kept_as), count(kept_as[kept_as != true_label[kept]])
    per_class = [{"class": name,
                  "clean_kept_share": _share(clean_kept[c], clean_here[c]),
                  "residual_noise": _share(kept_wrong[c], kept_here[c]),
                  "clean_lost": int(clean_lost[c])} for c, name in enumerate(classes)]  # fmt: skip
    report["per_class"] = per_class
    report["min_class_clean_kept_share"] = float(
        np.nanmin([r["clean_kept_share"] for r in per_class])
    )
    return report


def clean_retention(kept: pd.DataFrame, original: pd.DataFrame, classes: tuple[str, ...]) -> dict:
    """Benchmarks only: of the samples that were clean before the first round, the share still
    kept with their (correct) label, overall and per class. Both tables need ``true_label``;
    ``kept`` needs ``original_label`` (written by ``apply_decisions``)."""
    was_clean = original["label"] == original["true_label"]
    still = kept[
        (kept["original_label"] == kept["true_label"]) & (kept["label"] == kept["true_label"])
    ]
    before = original.loc[was_clean, "label"].value_counts()
    after = still["label"].value_counts()
    per_class = {name: _share(after.get(c, 0), before.get(c, 0)) for c, name in enumerate(classes)}
    return {"clean_kept_share": _share(len(still), int(was_clean.sum())),
            "min_class_clean_kept_share": float(np.nanmin(list(per_class.values()))),
            "per_class": per_class}  # fmt: skip
