"""Nearest neighbours in embedding space, and the label evidence they give.

A model trained on noisy labels memorises some wrong labels in its classifier, but the embedding
still places an image among others that look like it. The labels of a sample's k nearest
neighbours are a second opinion on its class (as in "deep k-NN" noise filtering); mixing that
distribution into the softmax separates clean from mislabelled samples better than the softmax
alone on FMNIST-LT-N (benchmarks/cleaning_rounds.py).

Two searches return the same N x k neighbour indices, so the rules, reports and out-of-fold
bookkeeping do not care which ran:
- ``exact``: cosine similarity in chunks; memory O(N * k) besides one chunk x N block, but
  N^2 * d multiply-adds: minutes on a large GPU at 2.5M x 512, a day or more on a CPU;
- ``faiss``: an inverted-file index with 8-bit scalar quantisation (2.5M x 512 in 1.3 GB),
  trained on a sample, searched with ``nprobe`` lists per query: about N * sqrt(N) work.
``auto`` takes ``exact`` below a size threshold and ``faiss`` above it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from noisytail.errors import NoisytailError
from noisytail.prediction import top_k_arrays

SEARCHES = ("auto", "exact", "faiss")


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise NoisytailError(
            "cleaning.neighbour_index: faiss needs the faiss-cpu package (`pip install "
            "faiss-cpu`, or faiss-gpu on a GPU machine); or set cleaning.neighbour_index: exact"
        ) from error
    return faiss


def faiss_neighbours(
    embeddings: np.ndarray, k: int, *, nprobe: int = 32, chunk: int = 65536, seed: int = 0
) -> np.ndarray:
    """Indices (N x k) of each row's k most cosine-similar other rows by an IVF index with 8-bit
    scalar quantisation (inner product of L2-normalised rows: cosine). Rows are converted to
    float32 one chunk at a time, so a float16 N x d input is never copied whole."""
    faiss = import_faiss()
    n, d = embeddings.shape
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 samples to find neighbours, got {n}")

    def rows(start: int) -> np.ndarray:
        block = np.ascontiguousarray(embeddings[start : start + chunk], dtype=np.float32)
        faiss.normalize_L2(block)
        return block

    nlist = int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))  # faiss wants >= 39 points a list
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist,
                                          faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 64 * nlist), replace=False))
    training = np.ascontiguousarray(embeddings[sample], dtype=np.float32)
    faiss.normalize_L2(training)
    index.train(training)
    for start in range(0, n, chunk):
        index.add(rows(start))
    index.nprobe = min(nprobe, nlist)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        _, found = index.search(rows(start), k + 1)
        own = np.arange(start, start + len(found))[:, None]
        keep = found != own  # a sample is not its own neighbour; without itself, drop the last
        keep[keep.all(axis=1), -1] = False  # (ids in a row are unique: one entry drops per row)
        found = found[keep].reshape(len(found), k)
        # -1: the probed lists held fewer than k others; repeat the nearest (or the sample)
        nearest = np.where(found[:, :1] < 0, own, found[:, :1])
        out[start : start + len(found)] = np.where(found < 0, nearest, found)
    return out


def nearest_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    search: str = "exact",
    threshold: int = 200_000,
    nprobe: int = 32,
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Indices (N x k) of each row's k most cosine-similar other rows, most similar first, by
    ``search``: exact, faiss, or auto (faiss from ``threshold`` rows up)."""
    if search not in SEARCHES:
        raise ValueError(f"cleaning.neighbour_index must be one of {SEARCHES}, got {search!r}")
    if search == "faiss" or (search == "auto" and len(embeddings) >= threshold):
        return faiss_neighbours(embeddings, k, nprobe=nprobe)
    return exact_neighbours(embeddings, k, chunk=chunk, device=device)


@torch.no_grad()
def exact_neighbours(
    embeddings: np.ndarray, k: int, *, chunk: int = 4096, device: str | torch.device | None = None
) -> np.ndarray:
    """Exact cosine search on ``device`` (default: the GPU when there is one)."""
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
    predictions: pd.DataFrame,
    k: int,
    weight: float,
    *,
    search: str = "exact",
    threshold: int = 200_000,
    nprobe: int = 32,
    device: str | torch.device | None = None,
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
        found = nearest_neighbours(embeddings[members], k, search=search, threshold=threshold,
                                   nprobe=nprobe, device=device)  # fmt: skip
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
