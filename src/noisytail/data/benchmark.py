"""FMNIST-LT-N: Fashion-MNIST made long-tailed and noisy, with the ground truth kept.

Implements ``shared/BENCHMARK.md`` exactly. Every random choice comes from one
``numpy.random.default_rng(seed)``, consumed in the order the definition gives, so the
benchmark is a pure function of its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NOISE_TYPES = ("imb", "sym")


@dataclass(frozen=True)
class LongTailNoisySplit:
    """Indices into the source training arrays plus the labels the benchmark assigns."""

    val_index: np.ndarray  # clean, balanced validation images (file indices)
    train_index: np.ndarray  # long-tailed training images, ascending file index
    true_label: np.ndarray  # clean label of each training image
    noisy_label: np.ndarray  # the given label (what training and cleaning may read)
    class_order: np.ndarray  # perm: class_order[rank] is the class with rank `rank`
    class_counts: np.ndarray  # clean long-tail count per class (indexed by class)

    @property
    def noise_mask(self) -> np.ndarray:
        return self.noisy_label != self.true_label


def long_tail_counts(num_classes: int, n_max: int, rho: float) -> np.ndarray:
    """``n_i = floor(n_max * rho ** (-i / (C - 1)))`` for rank i = 0..C-1."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return np.array(
        [math.floor(n_max * rho ** (-i / (num_classes - 1))) for i in range(num_classes)],
        dtype=np.int64,
    )


def noise_transition(counts: np.ndarray, noise_type: str) -> np.ndarray:
    """Row y: the distribution a flipped label of class y is drawn from (zero on y)."""
    num_classes = len(counts)
    if noise_type == "imb":
        weights = np.tile(counts.astype(np.float64), (num_classes, 1))
    elif noise_type == "sym":
        weights = np.ones((num_classes, num_classes), dtype=np.float64)
    else:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    np.fill_diagonal(weights, 0.0)
    return weights / weights.sum(axis=1, keepdims=True)


def make_long_tail_noisy(
    labels: np.ndarray,
    *,
    val_per_class: int = 100,
    n_max: int = 5000,
    rho: float = 100.0,
    noise_type: str = "imb",
    eta: float = 0.4,
    seed: int = 0,
) -> LongTailNoisySplit:
    """Build the benchmark's validation / long-tailed noisy training split from source labels."""
    if not 0.0 <= eta < 1.0:
        raise ValueError(f"eta must be in [0, 1), got {eta}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng(seed)

    # 1. Validation: the first `val_per_class` images of each class, in file order.
    val_index, pools = [], []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < val_per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than val_per_class")
        val_index.append(members[:val_per_class])
        pools.append(members[val_per_class:])

    # 2. Long tail: classes ranked by a random permutation, counts decay geometrically.
    class_order = rng.permutation(num_classes)
    rank_counts = long_tail_counts(num_classes, n_max, rho)
    class_counts = np.zeros(num_classes, dtype=np.int64)
    chosen = []
    for rank in range(num_classes):
        c = int(class_order[rank])
        n = int(rank_counts[rank])
        if n > len(pools[c]):
            raise ValueError(f"class {c} needs {n} images but its pool has {len(pools[c])}")
        chosen.append(rng.choice(pools[c], n, replace=False))
        class_counts[c] = n
    train_index = np.sort(np.concatenate(chosen))
    true_label = labels[train_index].astype(np.int64)

    # 3. Label noise: one draw for all, then one draw per flipped sample in order.
    flip = rng.random(len(train_index)) < eta
    transition = noise_transition(class_counts, noise_type)
    noisy_label = true_label.copy()
    for k in np.flatnonzero(flip):
        noisy_label[k] = rng.choice(num_classes, p=transition[true_label[k]])

    return LongTailNoisySplit(
        val_index=np.sort(np.concatenate(val_index)),
        train_index=train_index,
        true_label=true_label,
        noisy_label=noisy_label,
        class_order=class_order,
        class_counts=class_counts,
    )
