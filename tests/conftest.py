"""Shared fixtures: tiny image data made on the fly, and the environment tests must run in."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from noisytail.data.manifest import Manifest  # noqa: E402
from noisytail.data.sources import FASHION_MNIST_DIR, FASHION_MNIST_FILES  # noqa: E402

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
