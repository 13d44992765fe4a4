"""Training samplers: instance-balanced, class-balanced, square-root and repeated augmentation.

Each sampler draws the whole epoch's index list from ``default_rng([seed, epoch])`` and then
keeps its own rank's share (every ``num_replicas``-th position), so the draw is deterministic
for a (seed, epoch) and the ranks' shares are disjoint positions of one list. The training
loader is therefore *not* passed through ``accelerator.prepare`` (that would shard it twice).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Base class: subclasses return the full epoch's indices from ``draw_epoch(rng)``."""

    def __init__(
        self, labels: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw_epoch(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def epoch_indices(self) -> np.ndarray:
        """All ranks' indices for the current epoch, padded (by wrapping) to a multiple of ranks."""
        indices = self.draw_epoch(np.random.default_rng([self.seed, self.epoch]))
        padding = (-len(indices)) % self.num_replicas
        return np.concatenate([indices, indices[:padding]]) if padding else indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.num_replicas)


class InstanceBalancedSampler(EpochSampler):
    """Every sample once per epoch, shuffled: classes appear in proportion to their size."""

    def draw_epoch(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(len(self.labels))


class ClassAwareSampler(EpochSampler):
    """Class c is drawn with probability proportional to ``n_c ** power``, then a sample of it.

    ``power=0`` is class-balanced sampling, ``0.5`` square-root sampling. Within a class,
    samples are taken in a fresh random order each epoch and cycled, so each is seen as evenly
    as possible. All of it is sorting: O(N log N) an epoch, whatever the number of classes (a
    mask per class would be N x C: 2.5e11 comparisons at AliProducts' 2.5M x 50,030).
    """

    def __init__(self, labels: Sequence[int], power: float, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.power = power
        self.by_class = np.argsort(self.labels, kind="stable")  # samples grouped by class
        present, self.counts = np.unique(self.labels, return_counts=True)
        self.classes = present
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])  # in by_class
        weights = self.counts.astype(np.float64) ** power
        self.class_probs = weights / weights.sum()

    def draw_epoch(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        draws = rng.choice(len(self.classes), size=n, p=self.class_probs)  # a class per slot
        # each class's samples in a random order: sort by class, then by a random key
        grouped = self.labels[self.by_class]
        shuffled = self.by_class[np.lexsort((rng.random(n), grouped))]
        # the j-th slot of class k takes its (j mod n_k)-th sample: cycling through the class
        slots = np.argsort(draws, kind="stable")
        taken = np.bincount(draws, minlength=len(self.classes))
        first_slot = np.concatenate([[0], np.cumsum(taken)[:-1]])
        klass = draws[slots]
        rank = np.arange(n) - first_slot[klass]
        indices = np.empty(n, dtype=np.int64)
        indices[slots] = shuffled[self.starts[klass] + rank % self.counts[klass]]
        return indices


class RepeatedAugmentationSampler(EpochSampler):
    """DeiT's repeated augmentation: each drawn image appears ``repeats`` times in a row of the
    epoch list, so the copies land on different ranks (and get different augmentations).
    An epoch still has ``len(labels)`` items: ``1/repeats`` of the images, each ``repeats`` times.
    """

    def __init__(self, labels: Sequence[int], repeats: int = 3, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.repeats = repeats

    def draw_epoch(self, rng: np.random.Generator) -> np.ndarray:
        return np.repeat(rng.permutation(len(self.labels)), self.repeats)[: len(self.labels)]


SAMPLERS: dict[str, Callable[..., EpochSampler]] = {
    "instance_balanced": InstanceBalancedSampler,
    "class_balanced": lambda labels, **kw: ClassAwareSampler(labels, power=0.0, **kw),
    "square_root": lambda labels, **kw: ClassAwareSampler(labels, power=0.5, **kw),
    "repeated_augmentation": RepeatedAugmentationSampler,
}


def build_sampler(
    name: str, labels: Sequence[int], *, num_replicas: int = 1, rank: int = 0, seed: int = 0
) -> EpochSampler:
    """Sampler by name: one of ``SAMPLERS``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name](labels, num_replicas=num_replicas, rank=rank, seed=seed)
