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
    samples are taken in a fresh random order and cycled, so each is seen as evenly as possible.
    """

    def __init__(self, labels: Sequence[int], power: float, **kwargs) -> None:
        super().__init__(labels, **kwargs)
        self.power = power
        present, counts = np.unique(self.labels, return_counts=True)
        self.classes = present
        self.members = [np.flatnonzero(self.labels == c) for c in present]
        weights = counts.astype(np.float64) ** power
        self.class_probs = weights / weights.sum()

    def draw_epoch(self, rng: np.random.Generator) -> np.ndarray:
        draws = rng.choice(len(self.classes), size=len(self.labels), p=self.class_probs)
        indices = np.empty(len(self.labels), dtype=np.int64)
        for k, members in enumerate(self.members):
            slots = np.flatnonzero(draws == k)
            repeats = math.ceil(len(slots) / len(members)) if len(slots) else 0
            order = np.concatenate([rng.permutation(members) for _ in range(repeats)] or [[]])
            indices[slots] = order[: len(slots)]
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
