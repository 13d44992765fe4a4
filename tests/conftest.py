"""Shared fixtures: tiny image data made on the fly, and the environment tests must run in."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# Decoded-image caches of the tests' throw-away images go to a throw-away folder.
os.environ.setdefault("NOISYTAIL_CACHE_DIR", tempfile.mkdtemp(prefix="noisytail-test-cache-"))

from noisytail.config.data import FASHION_MNIST_DIR
from noisytail.data.manifest import Manifest  # noqa: E402
from noisytail.data.sources import FASHION_MNIST_FILES

REPO = Path(__file__).resolve().parents[1]


def has_fashion_mnist() -> bool:
    return all((FASHION_MNIST_DIR / f).is_file() for f in FASHION_MNIST_FILES)


needs_fashion_mnist = pytest.mark.skipif(
    not has_fashion_mnist(), reason="Fashion-MNIST not installed (`make data`)"
)


def save_image(path: Path, size=(12, 12), mode="RGB", seed=0, fmt=None) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/<class>/<n>.png|jpg: three classes, mixed sizes and modes."""
    root = tmp_path / "folder"
    for c, name in enumerate(["bag", "coat", "shoe"]):
        for i in range(4 + c):
            ext, mode = (".jpg", "RGB") if i % 2 else (".png", "L")
            save_image(root / name / f"{i}{ext}", size=(10 + i, 12), mode=mode, seed=10 * c + i)
    return root


def tiny_manifest(root: Path, per_class=(30, 12, 6), val_per_class=4, size=16) -> Manifest:
    """A learnable toy problem: each class is a distinct mean brightness plus noise."""
    rng = np.random.default_rng(0)
    rows = []
    for split, counts in (("train", per_class), ("val", [val_per_class] * len(per_class))):
        for c, n in enumerate(counts):
            for i in range(n):
                path = f"{split}/{c}_{i}.png"
                level = 40 + 80 * c
                img = np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img, "L").save(root / path)
                rows.append(
                    {"sample_id": f"{split}-{c}-{i}", "path": path, "label": c, "split": split}
                )
    table = pd.DataFrame(rows)
    table["true_label"] = table["label"]
    return Manifest(table, tuple(f"class{c}" for c in range(len(per_class))), root.resolve())


@pytest.fixture
def toy_manifest(tmp_path: Path) -> Manifest:
    return tiny_manifest(tmp_path / "toy")


SHAPES = ("horizontal_bar", "vertical_bar", "ring", "cross")


def shape_image(kind: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A grey ``size`` x ``size`` image of one shape at a random position, on noise.

    The classes differ in spatial structure only (similar brightness), so a model must see
    shape, not mean intensity, to tell them apart."""
    image = rng.normal(30, 12, (size, size))
    r, c = rng.integers(size // 4, 3 * size // 4, 2)  # the shape's centre
    level = rng.uniform(170, 240)
    lo, hi = max(r - 5, 0), min(r + 5, size)
    left, right = max(c - 5, 0), min(c + 5, size)
    if kind in ("horizontal_bar", "cross"):
        image[r - 1 : r + 1, left:right] = level
    if kind in ("vertical_bar", "cross"):
        image[lo:hi, c - 1 : c + 1] = level
    if kind == "ring":
        image[lo:hi, [left, right - 1]] = level
        image[[lo, hi - 1], left:right] = level
    return np.clip(image, 0, 255).astype(np.uint8)


def shapes_manifest(
    root: Path,
    per_class: int = 60,
    val_per_class: int = 10,
    test_per_class: int = 25,
    size: int = 16,
) -> Manifest:
    """Four shape classes (``SHAPES``) as PNG files with train / val / test splits."""
    rng = np.random.default_rng(1)
    rows = []
    for split, n in (("train", per_class), ("val", val_per_class), ("test", test_per_class)):
        for c, kind in enumerate(SHAPES):
            for i in range(n):
                path = f"{split}/{kind}_{i}.png"
                (root / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(shape_image(kind, rng, size), "L").save(root / path)
                rows.append({"sample_id": f"{split}-{kind}-{i}", "path": path, "label": c,
                             "split": split})  # fmt: skip
    table = pd.DataFrame(rows)
    table["true_label"] = table["label"]
    return Manifest(table, SHAPES, root.resolve())
