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
- ``faiss``: an inverted-file index of 4-bit product-quantised codes (of each row's residual
  from its list's centroid) scanned with SIMD ("fast scan"; 2.5M x 512 in 0.32 GB), trained on
  a sample, searched with ``nprobe`` lists per query; its ``candidates`` x k best guesses are
  re-ranked by exact cosine on the embeddings, so quantisation costs little recall and the lists
  left unprobed cost the most. Then ``refinement`` rounds of NN-descent's local join
  (cleaning/refinement.py) find the near ties no probed list holds: recall@30 at 2.5M synthetic
  samples 0.881 -> 0.973 (benchmarks/cleaning_scale.py). It runs on the CPU: faiss has no GPU
  fast-scan index, and on a GPU the exact search takes minutes.
``auto`` takes ``exact`` below a size threshold and ``faiss`` above it. Embeddings are held as
one float16 N x d array (2.5M x 512: 2.6 GB), converted to float32 a chunk at a time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from noisytail.cleaning.refinement import refine_neighbours
from noisytail.config.cleaning import SEARCHES
from noisytail.errors import NoisytailError
from noisytail.prediction import matrix_column, top_k_arrays
from noisytail.progress import progress


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
    embeddings: np.ndarray,
    k: int,
    *,
    nprobe: int = 16,
    candidates: int = 2,
    refinement: int = 4,
    chunk: int = 65536,
    seed: int = 0,
) -> np.ndarray:
    """Indices (N x k) of each row's k most cosine-similar other rows: ``candidates * (k + 1)``
    guesses from an IVF-PQ fast-scan index (inner product of L2-normalised rows), re-ranked by
    exact cosine, then improved by up to ``refinement`` local joins. Rows are converted to
    float32 one chunk at a time."""
    faiss = import_faiss()
    n, d = embeddings.shape
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"need at least 2 samples to find neighbours, got {n}")

    def rows(start: int, size: int = chunk) -> tuple[np.ndarray, np.ndarray]:
        """A float32 copy of the rows (the caller's array is left alone), L2-normalised, and
        their norms before."""
        block = np.array(embeddings[start : start + size], dtype=np.float32)
        lengths = np.linalg.norm(block, axis=1)
        faiss.normalize_L2(block)
        return block, lengths

    # 4 sqrt(N) lists; k-means costs lists^2, so it runs 8 iterations on 32 points a list.
    # (8 sqrt(N) lists gain recall, 0.943 -> 0.953 at 500k, but cost 1.3x the time at 2.5M.)
    nlist = int(np.clip(4 * np.sqrt(n), 1, max(1, n // 32)))
    codes = d // 2 if d % 2 == 0 else d  # 4-bit codes of 2 dimensions each: d / 4 bytes a row
    # "fsr": the codes quantise each row's residual from its list's centroid, which varies far
    # less than the row itself (recall@30 at 500k: 0.9235 -> 0.932, no slower)
    index = faiss.index_factory(d, f"IVF{nlist},PQ{codes}x4fsr", faiss.METRIC_INNER_PRODUCT)
    inverted = faiss.extract_index_ivf(index)
    inverted.cp.niter, inverted.cp.min_points_per_centroid = 8, 32
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, 32 * nlist), replace=False))
    training = np.ascontiguousarray(embeddings[sample], dtype=np.float32)
    faiss.normalize_L2(training)
    index.train(training)
    del training
    norms = np.empty(n, dtype=np.float32)  # for the exact re-ranking
    for start in range(0, n, chunk):
        block, norms[start : start + chunk] = rows(start)
        index.add(block)
    inverted.nprobe = min(nprobe, nlist)
    out = np.empty((n, k), dtype=np.int32 if n < 2**31 else np.int64)
    similarity = np.empty((n, k), dtype=np.float32)
    # Search a few thousand queries at a time: fast scan builds a lookup table per query and
    # probed list (8192 x 16 lists x 256 codes x 16 entries: 0.5 GB; 65536 queries took 4.3 GB).
    for start in progress(range(0, n, 8192), desc="faiss neighbours", unit="block"):
        _, found = index.search(rows(start, 8192)[0], min(n, candidates * (k + 1)))
        rows_found = slice(start, start + len(found))
        out[rows_found], similarity[rows_found] = reranked(embeddings, norms, start, found, k)
    del index, inverted  # the codes and lists: freed before the refinement's buffers
    return refine_neighbours(embeddings, out, similarity, rounds=refinement, norms=norms)


@torch.no_grad()
def reranked(
    embeddings: np.ndarray, norms: np.ndarray, start: int, found: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar of each query's approximate candidates ``found`` (-1: none),
    the query itself excluded, and their cosines; a query with fewer than k candidates repeats
    its nearest one (at cosine -inf). ``norms``: the rows' L2 norms."""
    out = np.empty((len(found), k), dtype=np.int64)
    cosine = np.empty((len(found), k), dtype=np.float32)
    # 64 queries at a time: their candidates as float32 (64 x 62 x 512: 8 MB) stay in the CPU's
    # cache between the conversion and the dot products; 1024 at a time ran 3x slower
    for first in range(0, len(found), 64):
        ids = torch.from_numpy(found[first : first + 64])
        own = torch.arange(start + first, start + first + len(ids))[:, None]
        queries = torch.from_numpy(embeddings[start + first : start + first + len(ids)])
        rows = ids.clamp(min=0).numpy()
        guess = torch.from_numpy(embeddings[rows]).float()
        # cosine = dot / |guess| (the query's own norm does not change its ranking)
        similarity = torch.einsum("qd,qcd->qc", queries.float(), guess)
        similarity /= torch.from_numpy(norms[rows]).clamp(min=1e-12)
        similarity[(ids < 0) | (ids == own)] = -float("inf")
        best = similarity.topk(k, dim=1)
        picked = ids.gather(1, best.indices)
        nearest = torch.where(torch.isinf(best.values[:, :1]), own, picked[:, :1])
        out[first : first + len(ids)] = torch.where(torch.isinf(best.values), nearest, picked)
        own_norm = torch.from_numpy(norms[start + first : start + first + len(ids)])
        cosine[first : first + len(ids)] = best.values / own_norm[:, None].clamp(min=1e-12)
    return out, cosine


def nearest_neighbours(
    embeddings: np.ndarray,
    k: int,
    *,
    search: str = "exact",
    threshold: int = 200_000,
    nprobe: int = 16,
    refinement: int = 4,
    chunk: int = 4096,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Indices (N x k) of each row's k most cosine-similar other rows, most similar first, by
    ``search``: exact, faiss, or auto (faiss from ``threshold`` rows up); ``nprobe`` and
    ``refinement`` (rounds of local joins) tune faiss."""
    if search not in SEARCHES:
        raise ValueError(f"cleaning.neighbour_index must be one of {SEARCHES}, got {search!r}")
    if search == "faiss" or (search == "auto" and len(embeddings) >= threshold):
        return faiss_neighbours(embeddings, k, nprobe=nprobe, refinement=refinement)
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
    embeddings: np.ndarray | None = None,
    search: str = "exact",
    threshold: int = 200_000,
    nprobe: int = 16,
    refinement: int = 4,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """Predictions whose probabilities are ``(1 - weight) * softmax + weight * neighbours``.

    ``neighbours(c)`` is the share of the sample's k nearest neighbours (by ``embeddings``, one
    row per prediction; default: the predictions' ``embedding`` column) whose given label is c.
    Neighbours are searched only among samples embedded by the same model (the ``fold`` column,
    when out-of-fold models made the predictions). The result has the same top-k columns, so
    every rule, report and comparison runs on it unchanged; classes outside both the stored top-k
    and the neighbours' labels get no mass.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"cleaning.neighbour_weight must be in [0, 1], got {weight}")
    if weight == 0 or k == 0:
        return predictions
    if embeddings is None:
        if "embedding" not in predictions:
            raise ValueError("neighbour smoothing needs predictions with an 'embedding' column "
                             "(pipelines/predict.py --for-cleaning stores it)")  # fmt: skip
        embeddings = embedding_matrix(predictions["embedding"])
    if len(embeddings) != len(predictions):
        raise ValueError(f"{len(embeddings)} embeddings for {len(predictions)} predictions")
    index, prob = top_k_arrays(predictions)
    label = predictions["label"].to_numpy().astype(np.int64)
    label_prob = predictions["label_prob"].to_numpy().astype(np.float64)
    groups = predictions["fold"].to_numpy() if "fold" in predictions else np.zeros(len(label))
    neighbour_labels = np.empty((len(label), k), dtype=np.int32)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        # one model embedded every sample: search the array itself, not a copy (2.6 GB at 2.5M)
        model_rows = embeddings if len(members) == len(embeddings) else embeddings[members]
        found = nearest_neighbours(model_rows, k, search=search, threshold=threshold, nprobe=nprobe,
                                   refinement=refinement, device=device)  # fmt: skip
        # a group smaller than k + 1: repeat its neighbours (each still counts 1/k on average)
        columns, group_labels = np.arange(k) % found.shape[1], label[members]
        for rows in np.array_split(np.arange(len(members)), max(1, len(members) // 65536)):
            neighbour_labels[members[rows]] = group_labels[found[rows]][:, columns]

    new_index, new_prob, new_label_prob = [], [], []
    for rows in np.array_split(np.arange(len(label)), max(1, len(label) // 16384)):
        i, p, nl = _mix(index[rows], prob[rows], label[rows], label_prob[rows],
                        neighbour_labels[rows], weight)  # fmt: skip
        new_index.append(i)
        new_prob.append(p)
        new_label_prob.append(nl)
    out = predictions.copy()
    out["topk_index"] = matrix_column(np.concatenate(new_index))
    out["topk_prob"] = matrix_column(np.concatenate(new_prob))
    out["label_prob"] = np.concatenate(new_label_prob)
    return out


def embedding_matrix(column: pd.Series, chunk: int = 65536) -> np.ndarray:
    """One float16 N x d array from a column of per-row vectors, stacked a chunk at a time (a
    float32 copy of 2.5M x 512 would be 5 GB more)."""
    values = column.to_numpy()
    out = np.empty((len(values), len(values[0])), dtype=np.float16)
    for start in range(0, len(values), chunk):
        out[start : start + chunk] = np.stack(values[start : start + chunk])
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
