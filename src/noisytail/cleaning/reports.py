"""Benchmarks only: a round's decisions against the truth (``true_label``), and the counts a
round reports per class. Nothing that trains or cleans reads these."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd


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

    Only the verified samples count (``true_label`` -1: not verified, as a user's partly
    verified data has them).
    """
    true_label = np.asarray(true_label)
    verified = true_label >= 0
    decided, true_label = decided[verified], true_label[verified]
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
    per_class = pd.DataFrame({"class": list(classes),
                              "clean_kept_share": shares(clean_kept, clean_here),
                              "residual_noise": shares(kept_wrong, kept_here),
                              "clean_lost": clean_lost})  # fmt: skip
    report["per_class"] = per_class  # a table: a row per class, whatever their number
    report["min_class_clean_kept_share"] = float(np.nanmin(per_class["clean_kept_share"]))
    return report


def shares(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` element by element, NaN where the denominator is 0."""
    out = np.full(len(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def clean_retention(kept: pd.DataFrame, original: pd.DataFrame, classes: tuple[str, ...]) -> dict:
    """Benchmarks only: of the samples that were clean before the first round, the share still
    kept with their (correct) label, overall and per class (an array by class index; NaN for a
    class with no clean sample). Both tables need ``true_label``;
    ``kept`` needs ``original_label`` (written by ``apply_decisions``)."""
    was_clean = original["label"] == original["true_label"]
    still = kept[
        (kept["original_label"] == kept["true_label"]) & (kept["label"] == kept["true_label"])
    ]
    before = np.bincount(original.loc[was_clean, "label"], minlength=len(classes))
    per_class = shares(np.bincount(still["label"], minlength=len(classes)), before)
    return {"clean_kept_share": _share(len(still), int(was_clean.sum())),
            "min_class_clean_kept_share": float(np.nanmin(per_class)),
            "per_class": per_class}  # fmt: skip


def val_detection(decided: pd.DataFrame) -> dict:
    """Benchmarks only: of the val samples a round judged, how many mislabelled and clean ones
    it dropped (``decided`` from ``rules.judge_val``, with ``true_label``)."""
    judged = decided[decided["judged"].to_numpy() & (decided["true_label"].to_numpy() >= 0)]
    noisy = (judged["label"] != judged["true_label"]).to_numpy()
    dropped = (judged["action"] != "keep").to_numpy()
    return {"judged": len(judged), "noisy": int(noisy.sum()),
            "dropped_noisy": int((noisy & dropped).sum()),
            "dropped_clean": int((~noisy & dropped).sum())}  # fmt: skip
