"""Nearest neighbours in embedding space, and the label evidence they give.

A model trained on noisy labels memorises some wrong labels in its classifier, but the embedding
still places an image among others that look like it. The labels of a sample's k nearest
neighbours are a second opinion on its class (as in "deep k-NN" noise filtering); mixing that
distribution into the softmax separates clean from mislabelled samples better than the softmax
alone on FMNIST-LT-N (benchmarks/cleaning_rounds.py).

Exact cosine search, chunked: memory is O(N * k) besides one chunk x N similarity block, so it
runs on millions of samples on one accelerator (N^2 * d multiply-adds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from noisytail.prediction import top_k_arrays


@torch.no_grad()
def nearest_neighbours(
    embeddings: np.ndarray, k: int, *, chunk: int = 4096, device: str | torch.device | None = None
) -> np.ndarray:
    """Indices (N x k) of each row's k most cosine-similar other rows, most similar first.
    Runs on ``device`` (default: the GPU when there is one)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float32), dim=1)
    x = x.to(device)
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 samples to find neighbours, got {n}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        similarity = x[start : start + chunk] @ x.T
        rows = torch.arange(len(similarity), device=similarity.device)
        similarity[rows, rows + start] = -float("inf")  # a sample is not its own neighbour
        out[start : start + chunk] = similarity.topk(k, dim=1).indices.cpu().numpy()
    return out


def neighbour_smoothed(
    predictions: pd.DataFrame, k: int, weight: float, *, device: str | torch.device | None = None
) -> pd.DataFrame:
    """Predictions whose probabilities are ``(1 - weight) * softmax + weight * neighbours``.

    ``neighbours(c)`` is the share of the sample's k nearest neighbours (by the stored
    ``embedding``) whose given label is c. Neighbours are searched only among samples embedded by
    the same model (the ``fold`` column, when out-of-fold models made the predictions). The result
    has the same top-k columns, so every rule, report and comparison runs on it unchanged; classes
    outside both the stored top-k and the neighbours' labels get no mass.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"cleaning.neighbour_weight must be in [0, 1], got {weight}")
    if weight == 0 or k == 0:
        return predictions
    if "embedding" not in predictions:
        raise ValueError("neighbour smoothing needs predictions with an 'embedding' column "
                         "(pipelines/predict.py --for-cleaning stores it)")  # fmt: skip
    index, prob = top_k_arrays(predictions)
    label = predictions["label"].to_numpy().astype(np.int64)
    label_prob = predictions["label_prob"].to_numpy().astype(np.float64)
    embeddings = np.stack(predictions["embedding"].to_numpy())
    groups = predictions["fold"].to_numpy() if "fold" in predictions else np.zeros(len(label))
    neighbour_labels = np.empty((len(label), k), dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        found = nearest_neighbours(embeddings[members], k, device=device)
        # a group smaller than k + 1: repeat its neighbours (each still counts 1/k on average)
        neighbour_labels[members] = label[members][found][:, np.arange(k) % found.shape[1]]

    new_index, new_prob, new_label_prob = [], [], []
    for rows in np.array_split(np.arange(len(label)), max(1, len(label) // 16384)):
        i, p, nl = _mix(index[rows], prob[rows], label[rows], label_prob[rows],
                        neighbour_labels[rows], weight)  # fmt: skip
        new_index.extend(i)
        new_prob.extend(p)
        new_label_prob.append(nl)
    out = predictions.copy()
    out["topk_index"], out["topk_prob"] = new_index, new_prob
    out["label_prob"] = np.concatenate(new_label_prob)
    return out


def _mix(index, prob, label, label_prob, neighbour_labels, weight):
    """One block of rows: mixed probabilities of the candidate classes (top-k, neighbours'
    labels, given label), reduced again to the top-k distinct classes."""
    candidates = np.concatenate([index, neighbour_labels, label[:, None]], axis=1)
    in_top_k = candidates[:, :, None] == index[:, None, :]
    soft = (in_top_k * prob[:, None, :]).max(axis=2)
    is_label = candidates == label[:, None]
    soft = np.where(is_label & ~in_top_k.any(axis=2), label_prob[:, None], soft)
    votes = (candidates[:, :, None] == neighbour_labels[:, None, :]).mean(axis=2)
    mixed = (1 - weight) * soft + weight * votes
    # a class may appear several times among the candidates (all copies have the same value):
    # keep its first copy only
    by_class = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, by_class, axis=1)
    repeat = np.zeros(candidates.shape, dtype=bool)
    np.put_along_axis(repeat, by_class[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    order = np.argsort(np.where(repeat, -np.inf, mixed), axis=1)[:, ::-1][:, : index.shape[1]]
    top_index = np.take_along_axis(candidates, order, axis=1).astype(np.int32)
    top_prob = np.take_along_axis(mixed, order, axis=1).astype(np.float32)
    return list(top_index), list(top_prob), mixed[:, -1].astype(np.float32)
