"""The prepare step as a library function: import a source, check every image, summarise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from noisytail.config import ConfigError
from noisytail.config.data import SOURCES, BenchmarkConfig, DataConfig
from noisytail.data.dataset import apply_bad_image_policy, find_bad_images
from noisytail.data.manifest import Manifest, validate
from noisytail.data.sku_lt_n import import_sku_lt_n
from noisytail.data.sources import (
    empty_class_folders,
    import_fmnist_lt_n,
    import_image_folder,
    import_table,
)
from noisytail.data.validation import hold_out_validation
from noisytail.metrics import shot_groups


def import_source(
    data: DataConfig, benchmark: BenchmarkConfig, image_dir: Path, seed: int
) -> Manifest:
    if data.source == "fmnist_lt_n":
        return import_fmnist_lt_n(
            image_dir, source_dir=data.fashion_mnist_dir, val_per_class=benchmark.val_per_class,
            n_max=benchmark.n_max, rho=benchmark.rho, noise_type=benchmark.noise_type,
            eta=benchmark.eta, test_per_class=benchmark.test_per_class, seed=seed,
        )  # fmt: skip
    if data.source == "sku_lt_n":
        return import_sku_lt_n(image_dir, benchmark.sku_lt_n, seed)
    if data.source == "image_folder":
        manifest = import_image_folder(data.path)
    elif data.source == "table":
        manifest = import_table(data.path, root=data.root or None)
    else:
        raise ConfigError(f"data.source must be one of {SOURCES}, got {data.source!r}")
    return manifest


def prepare(
    data: DataConfig, benchmark: BenchmarkConfig, out_dir: str | os.PathLike, seed: int = 0
) -> tuple[Manifest, dict[str, Any], pd.DataFrame]:
    """Import, check every image (error or skip), hold out val where there is none, validate;
    return the manifest, a summary (a handful of numbers) and the per-class counts (a table:
    class, given[, clean, noisy][, val_held_out])."""
    out_dir = Path(out_dir)
    manifest = import_source(data, benchmark, out_dir / "images", seed)
    bad = find_bad_images(manifest, workers=data.check_workers)
    manifest = apply_bad_image_policy(manifest, bad, data.on_bad_image, out_dir / "bad_images.csv")
    held = None
    if not (manifest.table["split"] == "val").any():  # after the check: only good images held out
        given = manifest.class_counts("train").to_numpy()
        manifest, held = hold_out_validation(manifest, data.val_fraction, data.val_per_class,
                                             data.val_min_class, seed)  # fmt: skip
        if not held.sum():
            raise ConfigError(
                f"data.val_min_class: no class has {data.val_min_class} images, so nothing was "
                f"held out for validation; lower data.val_min_class (or raise data.val_fraction), "
                f"or give the table a `split` column with some `val` rows"
            )
    validate(manifest.table, manifest.classes, data.path or data.source, ("train", "val"))
    summary, per_class = summarise(manifest, skipped=len(bad))
    if held is not None:
        per_class["val_held_out"] = held
        summary["val_held_out"] = held_out_by_group(given, held)
        print_held_out(summary["val_held_out"], data)
    if data.source == "image_folder":
        summary["empty_class_folders_skipped"] = len(empty_class_folders(data.path))
    return manifest, summary, per_class


def held_out_by_group(given: np.ndarray, held: np.ndarray) -> dict[str, dict[str, int]]:
    """Per many / medium / few group (by the given training count before the hold-out): its
    classes, how many of them val represents, and its val images."""
    groups = shot_groups(given)
    return {group: {"classes": int((groups == group).sum()),
                    "in_val": int(((groups == group) & (held > 0)).sum()),
                    "images": int(held[groups == group].sum())}
            for group in ("many", "medium", "few") if (groups == group).any()}  # fmt: skip


def print_held_out(by_group: dict[str, dict[str, int]], data: DataConfig) -> None:
    """Say what went to validation, per frequency group, and what such a split measures."""
    total = sum(g["images"] for g in by_group.values())
    print(
        f"validation: held out {total} training images ({data.val_fraction:.0%} of each class "
        f"of {data.val_min_class} or more, at least one, at most {data.val_per_class}):"
    )
    for group, g in by_group.items():
        print(f"  {group:<6} classes: {g['images']} images from {g['in_val']} of {g['classes']} "
              f"classes")  # fmt: skip
    print("  note: this split is cut from the given (noisy) labels; the last cleaning round "
          "judges it and tuning uses what it keeps (a cleaned val). A clean `split: val` in the "
          "table is better still")  # fmt: skip


def summarise(manifest: Manifest, skipped: int = 0) -> tuple[dict[str, Any], pd.DataFrame]:
    """A handful of numbers (classes, splits, noise rate where ``true_label`` exists), and the
    per-class counts as a table (given labels; clean and noisy ones where the truth is known)."""
    train = manifest.split("train")
    given = manifest.class_counts("train").to_numpy()
    per_class = pd.DataFrame({"class": list(manifest.classes), "given": given})
    summary: dict[str, Any] = {
        "num_classes": manifest.num_classes,
        "split_sizes": {
            s: int((manifest.table["split"] == s).sum()) for s in ("train", "val", "test")
        },
        "bad_images_skipped": skipped,
        "train_images_per_class": {
            "max": int(given.max()),
            "median": float(np.median(given)),
            "min": int(given.min()),
        },  # fmt: skip
    }
    if "true_label" in train:  # over the verified samples (a user's table may verify a subset)
        verified = train["true_label"].to_numpy() >= 0
        summary["verified_train_samples"] = int(verified.sum())
        train = train[verified]
        label, truth = train["label"].to_numpy(), train["true_label"].to_numpy()
        noisy = label != truth
        per_class["clean"] = np.bincount(truth, minlength=manifest.num_classes)
        per_class["noisy"] = np.bincount(label[noisy], minlength=manifest.num_classes)
        summary["noisy_labels"] = int(noisy.sum())
        summary["noise_rate"] = round(float(noisy.mean()), 4) if len(noisy) else 0.0
    return summary, per_class
