"""The prepare step as a library function: import a source, check every image, summarise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from noisytail.data.dataset import apply_bad_image_policy, find_bad_images
from noisytail.data.manifest import Manifest, validate
from noisytail.data.sources import (
    FASHION_MNIST_DIR,
    hold_out_validation,
    import_fmnist_lt_n,
    import_image_folder,
    import_table,
)

SOURCES = ("fmnist_lt_n", "image_folder", "table")


@dataclass(frozen=True)
class DataConfig:
    """``data:`` in params.yaml."""

    source: str = "fmnist_lt_n"  # fmnist_lt_n | image_folder | table
    path: str = ""  # image folder or CSV/parquet table for the user sources
    root: str = ""  # folder that relative paths in a table are resolved against
    val_per_class: int = 100  # user sources without a val split: hold out this many per class
    on_bad_image: str = "error"  # error | skip
    check_workers: int = 8
    fashion_mnist_dir: str = str(FASHION_MNIST_DIR)


@dataclass(frozen=True)
class BenchmarkConfig:
    """``benchmark:`` in params.yaml: FMNIST-LT-N (shared/BENCHMARK.md)."""

    n_max: int = 5000
    rho: float = 100.0
    noise_type: str = "imb"
    eta: float = 0.4
    val_per_class: int = 100


def import_source(
    data: DataConfig, benchmark: BenchmarkConfig, image_dir: Path, seed: int
) -> Manifest:
    if data.source == "fmnist_lt_n":
        return import_fmnist_lt_n(
            image_dir, source_dir=data.fashion_mnist_dir, val_per_class=benchmark.val_per_class,
            n_max=benchmark.n_max, rho=benchmark.rho, noise_type=benchmark.noise_type,
            eta=benchmark.eta, seed=seed,
        )  # fmt: skip
    if data.source == "image_folder":
        manifest = import_image_folder(data.path)
    elif data.source == "table":
        manifest = import_table(data.path, root=data.root or None)
    else:
        raise ValueError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    return manifest


def prepare(
    data: DataConfig, benchmark: BenchmarkConfig, out_dir: str | os.PathLike, seed: int = 0
) -> tuple[Manifest, dict[str, Any]]:
    """Import, check every image (error or skip), validate; return the manifest and a summary."""
    out_dir = Path(out_dir)
    manifest = import_source(data, benchmark, out_dir / "images", seed)
    bad = find_bad_images(manifest, workers=data.check_workers)
    manifest = apply_bad_image_policy(manifest, bad, data.on_bad_image, out_dir / "bad_images.csv")
    if not (manifest.table["split"] == "val").any():  # after the check: only good images held out
        manifest = hold_out_validation(manifest, data.val_per_class, seed)
    validate(manifest.table, manifest.classes, data.path or data.source, ("train", "val"))
    return manifest, summarise(manifest, skipped=len(bad))


def summarise(manifest: Manifest, skipped: int = 0) -> dict[str, Any]:
    """Per-class counts (given labels, and clean ones where ``true_label`` exists), noise rate."""
    train = manifest.split("train")
    summary: dict[str, Any] = {
        "num_classes": manifest.num_classes,
        "split_sizes": {
            s: int((manifest.table["split"] == s).sum()) for s in ("train", "val", "test")
        },
        "bad_images_skipped": skipped,
        "train_per_class": {
            name: int(n) for name, n in zip(manifest.classes, manifest.class_counts("train"))
        },
    }
    if "true_label" in train:
        clean = manifest.class_counts("train", "true_label")
        noisy = train["label"].to_numpy() != train["true_label"].to_numpy()
        summary["clean_per_class"] = {n: int(c) for n, c in zip(manifest.classes, clean)}
        summary["noisy_per_class"] = {
            name: int(np.sum(noisy & (train["label"].to_numpy() == i)))
            for i, name in enumerate(manifest.classes)
        }
        summary["noisy_labels"] = int(noisy.sum())
        summary["noise_rate"] = round(float(noisy.mean()), 4)
    return summary
