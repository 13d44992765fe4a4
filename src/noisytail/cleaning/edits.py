"""Manifest edits: a round's decisions applied to its training rows (images are never copied)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisytail.data.manifest import Manifest


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
