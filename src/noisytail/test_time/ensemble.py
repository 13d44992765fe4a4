"""The seed's ensemble: members' top-10 probabilities averaged with weights, never N x C.

Each member contributes its top-``top`` classes and probabilities per sample (after its own tau
and test-time augmentation); a class outside a member's top list counts 0 for that member. At
AliProducts scale (2.5M samples x 50,030 classes x 8 members) a dense N x C matrix would be
500 GB; here each chunk of samples is reduced on its own: the members' lists are concatenated
(n x M*top), sorted by class within each row, summed per run of equal classes, and the top-k
sums kept. Memory is O(chunk * M * top) beyond the inputs and the N x k result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from noisytail.progress import progress


def merge_top_k(
    index: np.ndarray, prob: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per row of ``index``/``prob`` (n x L, classes may repeat within a row), the ``k`` classes
    with the largest summed probability, best first; rows with fewer than ``k`` distinct
    classes are padded with class -1 and score 0."""
    order = np.argsort(index, axis=1, kind="stable")
    index = np.take_along_axis(index, order, axis=1)
    total = np.cumsum(np.take_along_axis(prob, order, axis=1), axis=1, dtype=np.float64)
    last = np.ones(index.shape, dtype=bool)  # the last position of each run of one class
    last[:, :-1] = index[:, 1:] != index[:, :-1]
    # The running sum at the previous run's end (sums never fall: probabilities are >= 0).
    ends = np.maximum.accumulate(np.where(last, total, 0.0), axis=1)
    before = np.zeros_like(total)
    before[:, 1:] = ends[:, :-1]
    score = np.where(last, total - before, -1.0)
    k_eff = min(k, score.shape[1])
    top = np.argpartition(-score, k_eff - 1, axis=1)[:, :k_eff]
    top_score = np.take_along_axis(score, top, axis=1)
    rank = np.argsort(-top_score, axis=1, kind="stable")
    top, top_score = np.take_along_axis(top, rank, 1), np.take_along_axis(top_score, rank, 1)
    classes = np.take_along_axis(index, top, axis=1).astype(np.int32)
    missing = top_score < 0
    classes[missing], top_score[missing] = -1, 0.0
    if k_eff < k:  # fewer candidates than k at all
        pad = k - k_eff
        classes = np.pad(classes, ((0, 0), (0, pad)), constant_values=-1)
        top_score = np.pad(top_score, ((0, 0), (0, pad)))
    return classes, top_score.astype(np.float32)


def ensemble_top_k(
    members: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[float] | None = None,
    *,
    k: int = 5,
    top: int = 10,
    chunk: int = 65536,
    show_progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The weighted average of the members' top-``top`` probabilities; the ``k`` best classes
    per sample and their averaged probability.

    ``members``: per member, ``(index, prob)``, each N x K (K >= ``top``), best first.
    ``weights``: one per member (default equal); normalised to sum to 1.
    """
    if not members:
        raise ValueError("ensemble_top_k: no members")
    n = len(members[0][0])
    for m, (index, prob) in enumerate(members):
        if index.shape != prob.shape or len(index) != n:
            raise ValueError(f"member {m}: index {index.shape} and prob {prob.shape} must both "
                             f"be {n} x K")  # fmt: skip
        if index.shape[1] < top:
            raise ValueError(f"member {m} has top-{index.shape[1]} lists, fewer than top={top}")
    w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(members),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {len(members)} non-negative numbers, not all 0: {w}")
    w = (w / w.sum()).astype(np.float32)

    classes = np.empty((n, k), dtype=np.int32)
    scores = np.empty((n, k), dtype=np.float32)
    starts = range(0, n, chunk)
    for start in progress(starts, desc="ensemble", unit="chunk", enabled=show_progress):
        stop = min(start + chunk, n)
        index = np.concatenate([i[start:stop, :top] for i, _ in members], axis=1)
        prob = np.concatenate([wm * p[start:stop, :top] for wm, (_, p) in zip(w, members)], 1)
        classes[start:stop], scores[start:stop] = merge_top_k(index, prob, k)
    return classes, scores
