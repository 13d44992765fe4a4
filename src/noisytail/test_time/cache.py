"""The view cache (per member, scale and split: ten views' top-K bias-free logits) and what a
member contributes to the ensemble from it at a tau and a TTA mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisytail.test_time.ensemble import merge_top_k
from noisytail.test_time.tau import tau_probabilities

# torchvision's ten_crop order: 4 corners + centre, then the same of the flipped image
TTA_MODES: dict[str, tuple[int, ...]] = {"none": (4,), "flip": (4, 9), "ten_crop": tuple(range(10))}


def tta_top_k(
    cache: dict[str, np.ndarray], tau: float | None, mode: str, top: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One member's top-``top`` classes and probabilities at ``tau`` (None: the trained
    classifier, bias included), averaged over the views of ``mode``: what the member
    contributes to the ensemble."""
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode must be one of {list(TTA_MODES)}, got {mode!r}")
    views = list(TTA_MODES[mode])
    index = cache["index"][:, views]
    prob = tau_probabilities(cache["logit"][:, views], index, cache["norm"], tau,
                             cache.get("bias")) / len(views)  # fmt: skip
    n = len(index)
    return merge_top_k(index.reshape(n, -1), prob.reshape(n, -1), top)


def stack_caches(caches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the caches of several splits (same model)."""
    keys = ("sample_id", "label", "index", "logit")
    merged = {k: np.concatenate([c[k] for c in caches]) for k in keys}
    merged["norm"], merged["bias"] = caches[0]["norm"], caches[0]["bias"]
    return merged


def load_views(
    folder: str | Path, scales: Sequence[float], split: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """The caches of ``predict_views`` for one member, keyed by scale (``"1"``, ``"1.25"``);
    only ``split``'s rows when given."""
    caches = {}
    for scale in scales:
        path = Path(folder) / f"scale_{scale:g}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the member_views stage")
        with np.load(path) as stored:
            data = {k: stored[k] for k in stored.files}
        caches[f"{scale:g}"] = data if split is None else split_rows(data, split)
    return caches


def split_rows(cache: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    """The rows of one split of a cache (the per-class arrays are shared)."""
    rows = select_rows(cache, cache["split"] == split)
    rows.pop("split")
    return rows


def select_rows(cache: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of a cache where ``keep`` holds (the per-class arrays are shared)."""
    return {k: v if k in ("norm", "bias") else v[keep] for k, v in cache.items()}


def cleaned_val(decisions_file: str | Path, sample_ids: np.ndarray) -> np.ndarray:
    """Which of the val ``sample_ids`` to tune on: those the last cleaning round kept
    (``val_decisions.parquet``; all of them without one, or for a val of the data's own)."""
    if not decisions_file or not Path(decisions_file).is_file():
        return np.ones(len(sample_ids), dtype=bool)
    import pandas as pd

    decided = pd.read_parquet(decisions_file, columns=["sample_id", "action"])
    action = pd.Series(np.asarray(sample_ids)).map(decided.set_index("sample_id")["action"])
    return (action.fillna("keep") == "keep").to_numpy()


def moved_into_top(cache: dict[str, np.ndarray], tau: float | None, top: int = 10) -> float:
    """The share of samples whose top-``top`` at ``tau`` holds a class the classifier as trained
    did not rank in its own top-``top`` (what a top-K cache of only ``top`` could not give)."""
    if tau is None:
        return 0.0
    plain, _ = tta_top_k(cache, None, "none", top)
    tuned, _ = tta_top_k(cache, tau, "none", top)
    outside = ~(tuned[:, :, None] == plain[:, None, :]).any(axis=2) & (tuned >= 0)
    return float(outside.any(axis=1).mean()) if len(tuned) else 0.0
