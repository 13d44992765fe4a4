"""Neighbour evidence: exact chunked k-NN, and softmax mixed with the neighbours' labels."""

import numpy as np
import pandas as pd
import pytest

from noisytail.cleaning.neighbours import (
    embedding_matrix,
    nearest_neighbours,
    neighbour_smoothed,
    reranked,
)
from noisytail.errors import NoisytailError
from noisytail.prediction import top_k_arrays


def test_nearest_neighbours_match_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8)).astype(np.float32)
    found = nearest_neighbours(x, 5, chunk=7)  # 8 chunks, the last one short
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    expected = np.argsort(-similarity, axis=1)[:, :5]
    np.testing.assert_array_equal(found, expected)
    assert not (found == np.arange(50)[:, None]).any()  # never its own neighbour


def table(labels, embeddings, probs, fold=None):
    """probs: per sample {class: prob}; top-k = the listed classes, best first."""
    rows = []
    for i, (label, p) in enumerate(zip(labels, probs)):
        ranked = sorted(p.items(), key=lambda kv: -kv[1])
        rows.append({"sample_id": f"s{i}", "label": label,
                     "topk_index": np.array([c for c, _ in ranked]),
                     "topk_prob": np.array([v for _, v in ranked], dtype=np.float32),
                     "label_prob": p.get(label, 0.0),
                     "embedding": np.asarray(embeddings[i], dtype=np.float32)})  # fmt: skip
    out = pd.DataFrame(rows)
    return out if fold is None else out.assign(fold=fold)


# Two tight clusters. s0-s3 sit in cluster "a" (class 0); s3 carries the wrong label 1 and the
# model has memorised it (0.9). s4-s7 sit in cluster "b" and are labelled 2 (class 1 is nowhere
# among their predictions).
EMBEDDINGS = [[1, 0.01 * i] for i in range(4)] + [[0.01 * i, 1] for i in range(4)]
LABELS = [0, 0, 0, 1, 2, 2, 2, 2]
PROBS = [{0: 0.8, 2: 0.2}] * 3 + [{1: 0.9, 0: 0.1}] + [{2: 0.7, 0: 0.3}] * 4


def test_neighbours_outvote_a_memorised_wrong_label():
    mixed = neighbour_smoothed(table(LABELS, EMBEDDINGS, PROBS), k=3, weight=0.5)
    index, prob = top_k_arrays(mixed)
    # s3's neighbours are s0-s2 (label 0): p(0) = .5 * .1 + .5 * 1, p(1) = .5 * .9 + 0
    assert index[3, :2].tolist() == [0, 1]
    np.testing.assert_allclose(prob[3, :2], [0.55, 0.45], atol=1e-6)
    assert mixed.loc[3, "label_prob"] == pytest.approx(0.45)
    # s0's neighbours are s1, s2 (label 0) and s3 (label 1): class 1 enters its top-k
    assert index[0].tolist() == [0, 1]
    np.testing.assert_allclose(prob[0], [0.4 + 1 / 3, 1 / 6], atol=1e-6)
    # never wider than the stored top-k (2 here), distinct classes, best first
    assert index.shape == (8, 2) and all(len(set(i)) == 2 for i in index.tolist())
    assert np.all(np.diff(prob, axis=1) <= 0)


def test_neighbours_are_searched_within_one_fold_model():
    # the same points in both folds, labels differ: each fold only sees its own labels
    embeddings = EMBEDDINGS[:4] * 2
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    probs = [{0: 0.5, 1: 0.5}] * 8
    mixed = neighbour_smoothed(table(labels, embeddings, probs, fold=[0] * 4 + [1] * 4), 3, 1.0)
    index, prob = top_k_arrays(mixed)
    assert index[:, 0].tolist() == labels
    np.testing.assert_allclose(prob[:, 0], 1.0)


def test_weight_zero_is_the_softmax_and_bad_input_is_named():
    plain = table(LABELS, EMBEDDINGS, PROBS)
    assert neighbour_smoothed(plain, k=3, weight=0) is plain
    with pytest.raises(ValueError, match="neighbour_weight"):
        neighbour_smoothed(plain, k=3, weight=1.5)
    with pytest.raises(ValueError, match="'embedding' column"):
        neighbour_smoothed(plain.drop(columns="embedding"), k=3, weight=0.5)


def clusters(per_cluster=60, centres=8, dim=16, seed=0):
    """Tight clusters far apart: every sample's nearest neighbours are its own cluster."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=(centres, dim)) * 10
    points = np.repeat(centre, per_cluster, axis=0) + rng.normal(size=(centres * per_cluster, dim))
    return points.astype(np.float32), np.repeat(np.arange(centres), per_cluster)


def test_faiss_and_exact_agree_where_the_gaps_are_clear():
    points, cluster = clusters()
    exact = nearest_neighbours(points, 20, search="exact")
    approximate = nearest_neighbours(points, 20, search="faiss", nprobe=8)
    assert approximate.shape == exact.shape == (len(points), 20)
    assert (cluster[approximate] == cluster[:, None]).all()  # all within the sample's cluster
    assert not (approximate == np.arange(len(points))[:, None]).any()  # never itself
    # the candidates are re-ranked by exact cosine: each row is in decreasing similarity
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarity = np.einsum("nd,nkd->nk", unit, unit[approximate])
    assert (np.diff(similarity, axis=1) <= 1e-6).all()
    # a cluster of exactly k + 1: the neighbour set is the rest of the cluster, a clear gap
    points, cluster = clusters(per_cluster=21)
    approximate = nearest_neighbours(points, 20, search="faiss", nprobe=8)
    expected = [sorted(set(np.flatnonzero(cluster == c)) - {i}) for i, c in enumerate(cluster)]
    assert [sorted(row) for row in approximate.tolist()] == expected


def test_reranking_drops_the_query_and_missing_candidates():
    embeddings = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.5, 0.5]], dtype=np.float16)
    # query 0's candidates: itself, 2, 1, none (-1); query 1 found only itself
    found = np.array([[0, 2, 1, -1], [1, -1, -1, -1]])
    norms = np.linalg.norm(embeddings.astype(np.float32), axis=1)
    picked, cosine = reranked(embeddings, norms, 0, found, 2)
    assert picked[0].tolist() == [1, 2]  # by cosine, itself and -1 left out
    unit = embeddings.astype(np.float32) / norms[:, None]
    np.testing.assert_allclose(cosine[0], [unit[0] @ unit[1], unit[0] @ unit[2]], atol=1e-6)
    assert picked[1].tolist() == [1, 1]  # nothing found: the query repeats itself, never -1
    assert np.isneginf(cosine[1]).all()


def test_embeddings_given_as_an_array_match_the_column():
    plain = table(LABELS, EMBEDDINGS, PROBS)
    matrix = embedding_matrix(plain["embedding"], chunk=3)
    assert matrix.dtype == np.float16 and matrix.shape == (8, 2)
    by_column = neighbour_smoothed(plain, k=3, weight=0.5)
    by_array = neighbour_smoothed(plain.drop(columns="embedding"), 3, 0.5, embeddings=matrix)
    pd.testing.assert_frame_equal(by_array, by_column.drop(columns="embedding"))
    with pytest.raises(ValueError, match="7 embeddings for 8 predictions"):
        neighbour_smoothed(plain, 3, 0.5, embeddings=matrix[:7])


def test_auto_takes_faiss_from_the_threshold_up(monkeypatch):
    import noisytail.cleaning.neighbours as module

    calls = []
    monkeypatch.setattr(module, "faiss_neighbours", lambda x, k, **_: calls.append("faiss"))
    monkeypatch.setattr(module, "exact_neighbours", lambda x, k, **_: calls.append("exact"))
    points, _ = clusters(per_cluster=10)
    for threshold in (81, 80, 79):
        module.nearest_neighbours(points, 5, search="auto", threshold=threshold)
    module.nearest_neighbours(points, 5, search="faiss", threshold=10**9)
    assert calls == ["exact", "faiss", "faiss", "faiss"]
    with pytest.raises(ValueError, match="cleaning.neighbour_index must be one of"):
        module.nearest_neighbours(points, 5, search="annoy")


def test_missing_faiss_is_named_when_asked_for(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    points, _ = clusters(per_cluster=10)
    with pytest.raises(NoisytailError, match="faiss needs the faiss-cpu package"):
        nearest_neighbours(points, 5, search="faiss")
    assert nearest_neighbours(points, 5, search="exact").shape == (80, 5)  # exact still works


def test_one_model_searches_the_embeddings_without_a_copy(monkeypatch):
    import noisytail.cleaning.neighbours as module

    plain = table(LABELS, EMBEDDINGS, PROBS)
    matrix = embedding_matrix(plain["embedding"])
    searched = []
    search = module.nearest_neighbours

    def recorded(rows, k, **kwargs):
        searched.append(rows)
        return search(rows, k, **kwargs)

    monkeypatch.setattr(module, "nearest_neighbours", recorded)
    neighbour_smoothed(plain, 3, 0.5, embeddings=matrix)
    assert searched[0] is matrix  # 2.6 GB at 2.5M x 512 float16: never copied
    neighbour_smoothed(plain.assign(fold=[0] * 4 + [1] * 4), 3, 0.5, embeddings=matrix)
    assert [len(rows) for rows in searched[1:]] == [4, 4]  # one search per fold model
