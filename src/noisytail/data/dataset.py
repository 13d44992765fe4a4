"""Decoding images from a manifest, and the check that finds every bad image before training."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from noisytail.data.manifest import MAX_LISTED, Manifest, ManifestError

BAD_IMAGE_POLICIES = ("error", "skip")


class BadImageError(RuntimeError):
    """An image that cannot be decoded; the message names the file and the sample."""


def load_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """Decode any size, grey or colour, into an HxWxC uint8 array with ``channels`` channels."""
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path}: zero-byte file")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            array = np.asarray(image)
    except Exception as error:  # PIL raises many types for truncated or non-image files
        raise BadImageError(f"{path}: not a readable image ({error})") from error
    return array[..., None] if channels == 1 else array


class ImageDataset(Dataset):
    """Items ``(image, label, row)`` for the rows of one split of a manifest.

    Augmentation is reseeded per item from (seed, epoch, row), so an epoch's images are the same
    whatever the number of workers or processes, and a resumed run sees the data it would have.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        image_root: str | os.PathLike,
        transform=None,
        channels: int = 3,
        seed: int = 0,
        label_column: str = "label",
    ) -> None:
        self.paths = [Path(image_root) / p for p in rows["path"]]
        self.sample_ids = rows["sample_id"].astype(str).tolist()
        self.labels = torch.tensor(rows[label_column].to_numpy(copy=True), dtype=torch.long)
        self.transform, self.channels, self.seed = transform, channels, seed
        self.epoch = 0

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, split: str, transform=None, **kwargs
    ) -> ImageDataset:
        return cls(manifest.split(split), manifest.image_root, transform, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            image = load_image(self.paths[row], self.channels)
        except BadImageError as error:
            raise BadImageError(f"sample {self.sample_ids[row]!r}: {error}") from None
        if self.transform is not None:
            self.transform.set_random_seed(hash((self.seed, self.epoch, row)) % 2**32)
            image = self.transform(image=image)["image"]
        return image, self.labels[row], row


def _check(path: Path) -> str | None:
    try:
        load_image(path)
    except BadImageError as error:
        return str(error).split(": ", 1)[-1]
    return None


def find_bad_images(manifest: Manifest, workers: int = 8) -> pd.DataFrame:
    """Decode every image once; return the bad rows (``sample_id, path, split, reason``)."""
    paths = [manifest.resolve(p) for p in manifest.table["path"]]
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(
            tqdm(pool.map(_check, paths, chunksize=64), total=len(paths), desc="checking images",
                 unit="img", leave=False)
        )  # fmt: skip
    bad = manifest.table.loc[[r is not None for r in reasons], ["sample_id", "path", "split"]]
    return bad.assign(reason=[r for r in reasons if r is not None]).reset_index(drop=True)


def apply_bad_image_policy(
    manifest: Manifest, bad: pd.DataFrame, policy: str, report_path: str | os.PathLike
) -> Manifest:
    """``error``: raise, listing every bad row. ``skip``: drop them, listed in the report.

    The report (CSV) is always written, empty when all images are fine.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"data.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    report_path = Path(report_path)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    bad.to_csv(report_path, index=False)
    if bad.empty:
        return manifest
    if policy == "error":
        lines = [f"{r.sample_id} ({r.path}): {r.reason}" for r in bad.head(MAX_LISTED).itertuples()]
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise ManifestError(
            f"{len(bad)} bad image(s), listed in {report_path}; fix them or set "
            f"data.on_bad_image: skip to drop them:\n  " + "\n  ".join(lines) + more
        )
    return manifest.with_table(manifest.table[~manifest.table["sample_id"].isin(bad["sample_id"])])
