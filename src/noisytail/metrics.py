"""Classification metrics; the challenge's is mean class error (1 - mean per-class recall)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def per_class_recall(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class with no samples."""
    pred, target = np.asarray(pred), np.asarray(target)
    support = np.bincount(target, minlength=num_classes).astype(np.float64)
    hits = np.bincount(target[pred == target], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / support, np.nan)


def classification_report(
    pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    train_counts: Sequence[int] | None = None,
) -> dict[str, float]:
    """top-1 and mean class error in percent; with ``train_counts``, many/medium/few accuracy."""
    recall = per_class_recall(pred, target, num_classes)
    report = {
        "top1": 100.0 * float(np.mean(np.asarray(pred) == np.asarray(target))),
        "mean_class_error": 100.0 * (1.0 - float(np.nanmean(recall))),
    }
    if train_counts is not None:
        groups = shot_groups(np.asarray(train_counts))
        for group in ("many", "medium", "few"):
            members = recall[(groups == group) & ~np.isnan(recall)]
            if len(members):
                report[f"{group}_accuracy"] = 100.0 * float(members.mean())
    return report


def shot_group(clean_count: int, many: int = 1000, few: int = 200) -> str:
    """'many' (>= 1000 clean training images), 'few' (< 200) or 'medium'."""
    if clean_count >= many:
        return "many"
    if clean_count < few:
        return "few"
    return "medium"


def shot_groups(counts: np.ndarray, many: int = 1000, few: int = 200) -> np.ndarray:
    """``shot_group`` of each count, as one array (no Python loop over classes)."""
    return np.where(counts >= many, "many", np.where(counts < few, "few", "medium"))


def coverage_by_group(labels: np.ndarray, train_counts: np.ndarray) -> dict[str, dict[str, int]]:
    """Per many / medium / few group (by training count): the evaluation images and classes it
    has (tuning on a split without the tail would tune for the head only)."""
    groups = shot_groups(np.asarray(train_counts))
    images = np.bincount(labels, minlength=len(groups))
    return {group: {"images": int(images[groups == group].sum()),
                    "classes": int((images[groups == group] > 0).sum()),
                    "of_classes": int((groups == group).sum())}
            for group in ("many", "medium", "few") if (groups == group).any()}  # fmt: skip
