import numpy as np
import pytest

from noisytail.data.samplers import SAMPLERS, build_sampler

LABELS = np.repeat(np.arange(5), [500, 200, 80, 20, 5])  # a long tail


def draw(name, epoch=0, **kwargs):
    sampler = build_sampler(name, LABELS, **kwargs)
    sampler.set_epoch(epoch)
    return np.array(list(sampler))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_deterministic_per_seed_and_epoch(name):
    np.testing.assert_array_equal(draw(name, epoch=2, seed=1), draw(name, epoch=2, seed=1))
    assert not np.array_equal(draw(name, epoch=2, seed=1), draw(name, epoch=3, seed=1))
    assert not np.array_equal(draw(name, epoch=2, seed=1), draw(name, epoch=2, seed=2))


def test_instance_balanced_is_a_permutation():
    assert sorted(draw("instance_balanced")) == list(range(len(LABELS)))


def test_class_balanced_draws_each_class_equally():
    counts = np.bincount(LABELS[np.concatenate([draw("class_balanced", e) for e in range(20)])])
    expected = 20 * len(LABELS) / 5
    # binomial standard deviation ~ sqrt(n p (1-p)) ~ 64; allow 4 sigma
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected * 0.8))


def test_square_root_sampling_follows_sqrt_of_class_size():
    counts = np.bincount(LABELS[np.concatenate([draw("square_root", e) for e in range(20)])])
    sizes = np.bincount(LABELS)
    expected = 20 * len(LABELS) * np.sqrt(sizes) / np.sqrt(sizes).sum()
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 1)


def test_class_balanced_cycles_through_a_small_class():
    drawn = draw("class_balanced")
    tail = np.flatnonzero(LABELS == 4)
    seen = drawn[np.isin(drawn, tail)]
    assert set(seen) == set(tail)  # ~160 draws of a 5-image class visit every image
    assert np.bincount(seen - tail[0]).max() - np.bincount(seen - tail[0]).min() <= 1


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_ranks_take_disjoint_shares_of_one_epoch(name):
    shares = [draw(name, epoch=1, num_replicas=3, rank=r) for r in range(3)]
    sampler = build_sampler(name, LABELS, num_replicas=3)
    sampler.set_epoch(1)
    full = sampler.epoch_indices()
    assert all(len(s) == len(sampler) for s in shares)
    for r, share in enumerate(shares):  # each rank holds exactly its positions of the one list
        np.testing.assert_array_equal(share, full[r::3])
    if name == "instance_balanced":  # 805 samples on 3 ranks: 2 wrap around as padding
        union = np.concatenate(shares)
        assert len(set(union)) == len(LABELS)
        padding = (-len(LABELS)) % 3
        assert len(union) - len(set(union)) == padding == 2
        overlap = set(shares[0]) & set(shares[1]) | set(shares[1]) & set(shares[2])
        assert overlap <= set(full[:padding])  # only the wrapped-around samples repeat


def test_instance_balanced_ranks_cover_disjoint_samples():
    labels = np.zeros(300, dtype=int)  # divisible by 3: no padding
    shares = [
        set(build_sampler("instance_balanced", labels, num_replicas=3, rank=r)) for r in range(3)
    ]
    assert shares[0].isdisjoint(shares[1]) and shares[1].isdisjoint(shares[2])
    assert set.union(*shares) == set(range(300))


def test_repeated_augmentation_sends_copies_to_different_ranks():
    labels = np.zeros(300, dtype=int)
    sampler = build_sampler("repeated_augmentation", labels, num_replicas=3)
    full = sampler.epoch_indices()
    assert np.all(np.bincount(full) <= 3)
    triples = full.reshape(-1, 3)
    assert np.all(triples == triples[:, :1])  # rank r gets copy r of each image


def test_unknown_sampler_and_bad_rank():
    with pytest.raises(ValueError, match="unknown sampler 'cbs2'"):
        build_sampler("cbs2", LABELS)
    with pytest.raises(ValueError, match="rank 3"):
        build_sampler("instance_balanced", LABELS, num_replicas=3, rank=3)


def test_the_config_knows_every_sampler_by_name():
    from noisytail.config.training import SAMPLERS as NAMES
    from noisytail.data.samplers import SAMPLERS

    assert tuple(SAMPLERS) == NAMES
