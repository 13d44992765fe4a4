"""The validation hold-out for data that brings no ``val`` split."""

from __future__ import annotations

import numpy as np

from noisytail.data.manifest import Manifest


def hold_out_validation(
    manifest: Manifest,
    fraction: float = 0.1,
    per_class: int = 100,
    min_class: int = 3,
    seed: int = 0,
) -> tuple[Manifest, np.ndarray]:
    """Move ``max(1, floor(fraction * n))`` random training samples of each class with at least
    ``min_class`` images (at most ``per_class``) to the ``val`` split: one image from a class of
    3 to 19, a tenth of a larger one. On a long-tailed set a share per class with a floor of 10
    would take val only from the few head classes, and tau, TTA and the ensemble weights would be
    tuned without the tail, where the method earns its keep; a fixed number per class would strip
    the tail bare. The rows moved are marked ``held_out``: their labels are the given (noisy)
    ones, so the last cleaning round judges them before tuning trusts them (a cleaned val).
    Returns the manifest and how many were held out per class (by class index).

    One sort does it, whatever the number of classes: each class's training rows in a random
    order, the first ``take`` of each moved."""
    table = manifest.table.copy()
    table["held_out"] = False
    train = np.flatnonzero((table["split"] == "train").to_numpy())
    labels = table["label"].to_numpy()[train]
    n = np.bincount(labels, minlength=manifest.num_classes)
    share = np.minimum(per_class, np.maximum(1, (fraction * n).astype(int)))
    take = np.where(n >= min_class, share, 0)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(train)), labels))  # by class, randomly within it
    first = np.concatenate([[0], np.cumsum(n)[:-1]])
    rank = np.arange(len(train)) - first[labels[order]]
    moved = train[order[rank < take[labels[order]]]]
    split, held = table["split"].to_numpy().copy(), table["held_out"].to_numpy().copy()
    split[moved], held[moved] = "val", True
    table["split"], table["held_out"] = split, held
    return manifest.with_table(table), take
