"""The validation hold-out for data that brings no ``val`` split."""

from __future__ import annotations

import numpy as np

from noisytail.data.manifest import Manifest


def hold_out_validation(
    manifest: Manifest,
    fraction: float = 0.1,
    per_class: int = 100,
    min_class: int = 10,
    seed: int = 0,
) -> tuple[Manifest, dict[str, int]]:
    """Move ``floor(fraction * n)`` random training samples of each class (at most ``per_class``)
    to the ``val`` split, and none from a class with fewer than ``min_class`` images: on a
    long-tailed set a fixed number per class would strip the tail classes bare. The rows moved
    are marked ``held_out``: their labels are the given (noisy) ones, so the tuning stage judges
    them before it trusts them (a cleaned val). Returns the manifest and how many were held out
    per class (by name)."""
    table = manifest.table.copy()
    table["held_out"] = False
    rng = np.random.default_rng(seed)
    held = dict.fromkeys(manifest.classes, 0)
    for label, rows in table[table["split"] == "train"].groupby("label"):
        take = 0 if len(rows) < min_class else min(per_class, int(fraction * len(rows)))
        if take > 0:
            moved = rng.choice(rows.index.to_numpy(), take, replace=False)
            table.loc[moved, "split"], table.loc[moved, "held_out"] = "val", True
        held[manifest.classes[label]] = take
    return manifest.with_table(table), held
