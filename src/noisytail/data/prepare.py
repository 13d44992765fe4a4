"""The prepare step as a library function: import a source, check every image, summarise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from noisytail.config import ConfigError
from noisytail.config.data import SOURCES, BenchmarkConfig, DataConfig
from noisytail.data.dataset import apply_bad_image_policy, find_bad_images
from noisytail.data.manifest import Manifest, validate
from noisytail.data.sources import (
    empty_class_folders,
    import_fmnist_lt_n,
    import_image_folder,
    import_table,
)
from noisytail.data.validation import hold_out_validation


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
        raise ConfigError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    return manifest


def prepare(
    data: DataConfig, benchmark: BenchmarkConfig, out_dir: str | os.PathLike, seed: int = 0
) -> tuple[Manifest, dict[str, Any]]:
    """Import, check every image (error or skip), validate; return the manifest and a summary."""
    out_dir = Path(out_dir)
    manifest = import_source(data, benchmark, out_dir / "images", seed)
    bad = find_bad_images(manifest, workers=data.check_workers)
    manifest = apply_bad_image_policy(manifest, bad, data.on_bad_image, out_dir / "bad_images.csv")
    held = None
    if not (manifest.table["split"] == "val").any():  # after the check: only good images held out
        manifest, held = hold_out_validation(manifest, data.val_fraction, data.val_per_class,
                                             data.val_min_class, seed)  # fmt: skip
        print_held_out(held, data)
        if not sum(held.values()):
            raise ConfigError(
                f"data.val_min_class: no class has {data.val_min_class} images, so nothing was "
                f"held out for validation; lower data.val_min_class (or raise data.val_fraction), "
                f"or give the table a `split` column with some `val` rows"
            )
    validate(manifest.table, manifest.classes, data.path or data.source, ("train", "val"))
    summary = summarise(manifest, skipped=len(bad))
    if held is not None:
        summary["val_held_out_per_class"] = held
    if data.source == "image_folder":
        summary["empty_class_folders_skipped"] = empty_class_folders(data.path)
    return manifest, summary


def print_held_out(held: dict[str, int], data: DataConfig) -> None:
    """Say per class what went to validation, and what such a split measures."""
    print(f"validation: held out {sum(held.values())} training images "
          f"({data.val_fraction:.0%} of each class, at most {data.val_per_class}, none from a "
          f"class of fewer than {data.val_min_class}):")  # fmt: skip
    for name, n in held.items():
        print(f"  {name}: {n}")
    print("  note: this split is cut from the given (noisy) labels, so validation error measures "
          "agreement with those labels, not accuracy; give a clean `split: val` in the table for "
          "an honest one")  # fmt: skip


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
    if "true_label" in train:  # over the verified samples (a user's table may verify a subset)
        verified = train["true_label"].to_numpy() >= 0
        summary["verified_train_samples"] = int(verified.sum())
        train = train[verified]
        clean = train["true_label"].value_counts().reindex(range(manifest.num_classes),
                                                           fill_value=0)  # fmt: skip
        noisy = train["label"].to_numpy() != train["true_label"].to_numpy()
        summary["clean_per_class"] = {n: int(c) for n, c in zip(manifest.classes, clean)}
        summary["noisy_per_class"] = {
            name: int(np.sum(noisy & (train["label"].to_numpy() == i)))
            for i, name in enumerate(manifest.classes)
        }
        summary["noisy_labels"] = int(noisy.sum())
        summary["noise_rate"] = round(float(noisy.mean()), 4)
    return summary
