"""Cleaning: scoring samples by a model's predictions, selecting what to keep, balanced subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd


def balanced_subset(rows: pd.DataFrame, confidence: np.ndarray, per_class: int) -> pd.DataFrame:
    """The ``per_class`` most confident rows of each class (all of a smaller one), in row order."""
    ranked = rows.assign(_confidence=np.asarray(confidence)).sort_values(
        ["label", "_confidence"], ascending=[True, False], kind="stable"
    )
    chosen = ranked.groupby("label", sort=False).head(per_class).index
    return rows.loc[sorted(chosen)].reset_index(drop=True)
