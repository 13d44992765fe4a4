"""The top-k ensemble on hand-made lists: exact sums, missing classes as 0, weights, chunking."""

import numpy as np
import pytest

from noisytail.test_time.ensemble import ensemble_top_k, merge_top_k


def test_hand_made_lists_give_the_exact_weighted_average():
    # two samples, two members, each member's top-3
    a_index = np.array([[0, 1, 2], [5, 4, 3]])
    a_prob = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]], dtype=np.float32)
    b_index = np.array([[1, 0, 7], [3, 9, 5]])
    b_prob = np.array([[0.5, 0.4, 0.1], [0.7, 0.2, 0.1]], dtype=np.float32)
    classes, scores = ensemble_top_k([(a_index, a_prob), (b_index, b_prob)], k=4, top=3)
    # sample 0: class 0 (0.6 + 0.4) / 2 = 0.5, class 1 (0.3 + 0.5) / 2 = 0.4,
    # class 2 only in a: 0.1 / 2, class 7 only in b: 0.1 / 2 (a tie, either order)
    assert classes[0, :2].tolist() == [0, 1] and set(classes[0, 2:].tolist()) == {2, 7}
    np.testing.assert_allclose(scores[0], [0.5, 0.4, 0.05, 0.05], atol=1e-6)
    # sample 1: class 3 (0.2 + 0.7) / 2 = 0.45, class 5 (0.5 + 0.1) / 2 = 0.3, 4: 0.15, 9: 0.1
    assert classes[1].tolist() == [3, 5, 4, 9]
    np.testing.assert_allclose(scores[1], [0.45, 0.3, 0.15, 0.1], atol=1e-6)


def test_weights_shift_the_vote_and_are_normalised():
    a = (np.array([[0, 1]]), np.array([[0.9, 0.1]], dtype=np.float32))
    b = (np.array([[1, 0]]), np.array([[0.8, 0.2]], dtype=np.float32))
    classes, scores = ensemble_top_k([a, b], weights=[1, 3], k=2, top=2)
    # class 1: (0.1 * 1 + 0.8 * 3) / 4 = 0.625; class 0: (0.9 + 0.2 * 3) / 4 = 0.375
    assert classes.tolist() == [[1, 0]]
    np.testing.assert_allclose(scores, [[0.625, 0.375]], atol=1e-6)
    same, _ = ensemble_top_k([a, b], weights=[2, 6], k=2, top=2)
    assert same.tolist() == classes.tolist()
    only_a, _ = ensemble_top_k([a, b], weights=[1, 0], k=1, top=2)
    assert only_a.tolist() == [[0]]


def test_only_each_members_top_lists_count():
    index = np.array([[4, 3, 2, 1]])
    prob = np.array([[0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    classes, scores = ensemble_top_k([(index, prob)], k=3, top=2)
    assert classes.tolist() == [[4, 3, -1]]  # classes 2 and 1 lie outside the top-2
    np.testing.assert_allclose(scores, [[0.4, 0.3, 0.0]], atol=1e-6)


def test_chunked_equals_a_dense_average():
    rng = np.random.default_rng(0)
    n, c, members, top = 1000, 40, 3, 10
    dense = np.zeros((n, c))
    lists = []
    for _ in range(members):
        p = rng.dirichlet(np.ones(c) * 0.3, size=n).astype(np.float32)
        index = np.argsort(-p, axis=1)[:, :top]
        prob = np.take_along_axis(p, index, axis=1)
        lists.append((index, prob))
        np.put_along_axis(mask := np.zeros((n, c)), index, prob, axis=1)
        dense += mask / members
    classes, scores = ensemble_top_k(lists, k=5, top=top, chunk=77)
    np.testing.assert_allclose(scores, -np.sort(-dense, axis=1)[:, :5], atol=1e-6)
    picked = np.take_along_axis(dense, classes, axis=1)
    np.testing.assert_allclose(picked, scores, atol=1e-6)


def test_merge_pads_rows_with_few_distinct_classes():
    classes, scores = merge_top_k(np.array([[2, 2]]), np.array([[0.25, 0.5]]), k=3)
    assert classes.tolist() == [[2, -1, -1]]
    np.testing.assert_allclose(scores, [[0.75, 0, 0]])


@pytest.mark.parametrize(
    ("members", "weights", "message"),
    [
        ([], None, "no members"),
        ([(np.zeros((2, 10), int), np.zeros((3, 10)))], None, "must both be 2 x K"),
        ([(np.zeros((2, 5), int), np.zeros((2, 5)))], None, "fewer than top=10"),
        ([(np.zeros((2, 10), int), np.zeros((2, 10)))], [0.0], "not all 0"),
    ],
)
def test_bad_input_is_named(members, weights, message):
    with pytest.raises(ValueError, match=message):
        ensemble_top_k(members, weights)
