"""Cleaning rules: score each training sample by a model's predictions, then keep, drop or
relabel it.

Decisions read only the given labels and the stored top-k predictions, never ``true_label``;
``cleaning.reports`` (benchmarks) is the one place that compares them with the truth.

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

import numpy as np
import pandas as pd

from noisytail.cleaning.neighbours import neighbour_smoothed
from noisytail.config.cleaning import JUDGES, RULES, CleaningConfig
from noisytail.data.manifest import Manifest
from noisytail.prediction import top_k_arrays


def judged_samples(config: CleaningConfig, round_input: Manifest, original: Manifest) -> Manifest:
    """Whose labels a round judges: every sample of the original training set (``judge: all``),
    so that a clean sample dropped by an earlier, weaker model can come back, or only the round's
    own training samples (``judge: kept``: what was dropped stays dropped)."""
    if config.judge not in JUDGES:
        raise ValueError(f"cleaning.judge must be one of {JUDGES}, got {config.judge!r}")
    return original if config.judge == "all" else round_input


def class_prior(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's share of ``label``."""
    return np.bincount(label, minlength=num_classes) / max(len(label), 1)


def class_mean_scores(label: np.ndarray, score: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, the mean ``score`` of its samples (1 for a class without any)."""
    counts = np.bincount(label, minlength=num_classes)
    sums = np.bincount(label, score, minlength=num_classes)
    return np.divide(sums, counts, out=np.ones(num_classes), where=counts > 0)


def scores(
    predictions: pd.DataFrame,
    num_classes: int,
    prior_correction: float = 0.0,
    prior: np.ndarray | None = None,
) -> pd.DataFrame:
    """Per sample: ``pred``, ``confidence`` (its probability) and ``label_score`` (the given
    label's probability), optionally prior-corrected over the stored top-k plus the given label
    (by ``prior``, default the class shares of the predictions' own labels).
    """
    index, prob = top_k_arrays(predictions)
    index, prob = index.astype(np.int64), prob.astype(np.float64)
    label = predictions["label"].to_numpy()
    label_prob = predictions["label_prob"].to_numpy().astype(np.float64)
    if prior_correction:
        if prior is None:
            prior = class_prior(label, num_classes)
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


def decide(
    scored: pd.DataFrame,
    config: CleaningConfig,
    class_means: np.ndarray | None = None,
    floor: int | None = None,
) -> pd.DataFrame:
    """Add ``action`` (keep / drop / relabel) and ``new_label`` to the scored samples.

    ``class_means`` (per class, the mean ``label_score``) and ``floor`` (default
    ``min_per_class``) let another set be judged by the training samples' statistics."""
    if config.rule not in RULES:
        raise ValueError(f"cleaning.rule must be one of {RULES}, got {config.rule!r}")
    out = scored.copy()
    label = out["label"].to_numpy()
    disagree = out["pred"].to_numpy() != label
    score = out["label_score"].to_numpy()
    if config.per_class:  # relative to the class's own mean (Confident Learning's threshold)
        if class_means is None:
            class_means = class_mean_scores(label, score, int(label.max(initial=-1)) + 1)
        score = score / np.maximum(class_means[label], 1e-12)
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
    return apply_class_floor(out, config.min_per_class if floor is None else floor, score)


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
    """Give back the best-scored dropped samples of any class left with fewer than ``floor``.

    One sort, whatever the number of classes: the dropped samples by class and then by falling
    score (ties in row order), the first ``floor - kept`` of each class given back."""
    out = decided.copy()
    action, label = out["action"].to_numpy().copy(), out["label"].to_numpy()
    classes = int(max(label.max(initial=-1), out["new_label"].to_numpy().max(initial=-1))) + 1
    kept = np.bincount(out["new_label"].to_numpy()[action != "drop"], minlength=classes)
    missing = np.maximum(floor - kept, 0)
    dropped = np.flatnonzero(action == "drop")
    order = dropped[np.lexsort((-np.asarray(score)[dropped], label[dropped]))]
    by_class = label[order]
    first = np.searchsorted(by_class, by_class)  # where each class's run starts
    rank = np.arange(len(order)) - first
    action[order[rank < missing[by_class]]] = "keep"
    out["action"] = action
    return out


def unjudged_val(val: pd.DataFrame) -> pd.DataFrame:
    """Every val sample kept and not judged (with its ``true_label`` where known)."""
    decided = val[["sample_id", "label"]].assign(judged=False, action="keep")
    if "true_label" in val:
        decided["true_label"] = val["true_label"].to_numpy()
    return decided


def judge_val(
    val: pd.DataFrame,
    predictions: pd.DataFrame | None,
    num_classes: int,
    config: CleaningConfig,
    training: pd.DataFrame,
) -> pd.DataFrame:
    """Per val sample: whether it was judged and the action. Val samples cut from the given
    labels (``predictions`` of them: the round's model, which never trained on them) are judged
    by the rule on the softmax alone, with the training round's statistics (``training``: its
    scored samples): the training prior for the prior correction, each class's mean training
    score for ``per_class``, and no class floor (val's few images per class would otherwise
    always be kept). The tuning stage tunes on the ones kept. A val split of the data's own
    (``predictions`` None) is kept whole."""
    decided = unjudged_val(val)
    if predictions is None:
        return decided
    label = training["label"].to_numpy()
    prior = class_prior(label, num_classes)
    means = class_mean_scores(label, training["label_score"].to_numpy(), num_classes)
    scored = scores(predictions, num_classes, config.prior_correction, prior=prior)
    verdict = decide(scored, config, class_means=means, floor=0)
    action = decided["sample_id"].map(verdict.set_index("sample_id")["action"])
    judged = action.notna().to_numpy()
    decided.loc[judged, "judged"] = True
    decided.loc[judged, "action"] = action[judged]
    return decided
