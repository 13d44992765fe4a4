"""Decode once: small images of one shape are decoded into one memory-mapped array."""

import numpy as np
import pytest
from conftest import save_image

from noisytail.data import dataset as dataset_module
from noisytail.data.dataset import BadImageError, ImageDataset, cache_dir


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NOISYTAIL_CACHE_DIR", str(tmp_path / "cache"))
    return cache_dir()


def rows_of(toy_manifest):
    return toy_manifest.split("train")


def test_small_images_are_decoded_once_and_equal_the_files(toy_manifest, cache, monkeypatch):
    first = ImageDataset.from_manifest(toy_manifest, "train", channels=1)
    assert first.images is not None and len(list(cache.glob("*.npy"))) == 1
    for row in (0, 7, len(first) - 1):  # the cache holds exactly what the file decodes to
        np.testing.assert_array_equal(first.image(row),
                                      dataset_module.load_image(first.paths[row], 1))  # fmt: skip

    decoded, real_load = [], dataset_module.load_image
    monkeypatch.setattr(dataset_module, "load_image",
                        lambda *a: decoded.append(a) or real_load(*a))  # fmt: skip
    second = ImageDataset.from_manifest(toy_manifest, "train", channels=1)
    assert len(decoded) == 1  # only the first image, to size the cache; the rest is read back
    np.testing.assert_array_equal(second.image(3), first.image(3))


def test_a_rewritten_image_or_another_channel_count_builds_a_new_cache(toy_manifest, cache):
    ImageDataset.from_manifest(toy_manifest, "train", channels=1)
    ImageDataset.from_manifest(toy_manifest, "train", channels=3)
    assert len(list(cache.glob("*.npy"))) == 2
    path = toy_manifest.image_root / toy_manifest.split("train")["path"].iloc[0]
    save_image(path, size=(16, 16), mode="L", seed=99)
    again = ImageDataset.from_manifest(toy_manifest, "train", channels=1)
    assert len(list(cache.glob("*.npy"))) == 3
    np.testing.assert_array_equal(again.image(0), dataset_module.load_image(path, 1))


def test_large_or_mixed_images_keep_their_paths(tmp_path, cache, image_folder):
    import pandas as pd

    big = [save_image(tmp_path / f"big{i}.png", size=(80, 80), seed=i) for i in range(3)]
    rows = pd.DataFrame({"sample_id": ["a", "b", "c"], "path": [p.name for p in big],
                         "label": 0})  # fmt: skip
    assert ImageDataset(rows, tmp_path).images is None
    mixed = sorted(image_folder.rglob("*.*"))  # sizes 10..16 x 12
    rows = pd.DataFrame({"sample_id": [str(i) for i in range(len(mixed))],
                         "path": [str(p) for p in mixed], "label": 0})  # fmt: skip
    dataset = ImageDataset(rows, "/")
    assert dataset.images is None and dataset.image(0).shape[:2] == (12, 10)
    assert not list(cache.glob("*.npy"))


def test_a_bad_image_is_still_named_when_read(tmp_path, cache):
    import pandas as pd

    save_image(tmp_path / "good.png", size=(8, 8))
    (tmp_path / "empty.png").write_bytes(b"")
    rows = pd.DataFrame({"sample_id": ["ok", "broken"], "path": ["good.png", "empty.png"],
                         "label": 0})  # fmt: skip
    dataset = ImageDataset(rows, tmp_path)
    assert dataset.images is None
    with pytest.raises(BadImageError, match="sample 'broken'.*empty.png: zero-byte file"):
        dataset[1]
