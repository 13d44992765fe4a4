"""Decoding images from a manifest, the decode-once cache for small images, and the check that
finds every bad image before training."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from noisytail.config.data import BAD_IMAGE_POLICIES
from noisytail.data.manifest import MAX_LISTED, Manifest, ManifestError
from noisytail.data.transforms import seed_transform
from noisytail.errors import NoisytailError
from noisytail.progress import progress

# Images up to this many bytes each (a 64 x 64 RGB image is 12 kB) and this many in all are
# decoded once into one memory-mapped array; larger ones are decoded from their files each time.
CACHE_MAX_IMAGE_BYTES = 64 * 64 * 3
CACHE_MAX_TOTAL_BYTES = 4 * 2**30


class BadImageError(NoisytailError, RuntimeError):
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


def cache_dir() -> Path:
    """Where decoded images are cached: ``$NOISYTAIL_CACHE_DIR``, else ~/.cache/noisytail."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "noisytail"
    return Path(os.environ.get("NOISYTAIL_CACHE_DIR", default)) / "decoded"


def decoded_images(paths: list[Path], channels: int) -> np.ndarray | None:
    """All ``paths`` as one N x H x W x C uint8 array, decoded once and memory-mapped after.

    The cache file is named by a digest of the paths, their sizes and modification times and the
    channel count, so a changed manifest or a rewritten image builds a new one. Returns None (the
    caller decodes per item) when the images are large, of different shapes, too many, or one of
    them is bad (reading that item then raises the error that names it).
    """
    try:
        first = load_image(paths[0], channels) if paths else None
        if first is None or first.nbytes > CACHE_MAX_IMAGE_BYTES:
            return None
        if first.nbytes * len(paths) > CACHE_MAX_TOTAL_BYTES:
            return None
        digest = hashlib.sha256(str(channels).encode())
        for path in paths:
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        target = cache_dir() / f"{digest.hexdigest()[:24]}.npy"
        if target.is_file():
            return np.load(target, mmap_mode="r")
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            decoded = pool.map(lambda p: load_image(p, channels), paths, chunksize=256)
            images = list(progress(decoded, total=len(paths), desc="decoding images once",
                                   unit="img", leave=False))  # fmt: skip
    except (BadImageError, OSError):
        return None
    if any(image.shape != first.shape for image in images):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    np.save(partial, np.stack(images))
    os.replace(partial, target)  # complete or absent: a killed build leaves no half cache
    return np.load(target, mmap_mode="r")


class ImageDataset(Dataset):
    """Items ``(image, label, row)`` for the rows of one split of a manifest.

    Augmentation is reseeded per item from (seed, epoch, row), so an epoch's images are the same
    whatever the number of workers or processes, and a resumed run sees the data it would have.
    Small images of one shape are decoded once (``decoded_images``), not once per epoch.
    """

    def __init__(
        self,
        rows: pd.DataFrame,
        image_root: str | os.PathLike,
        transform=None,
        channels: int = 3,
        seed: int = 0,
        label_column: str = "label",
        cache: bool = True,
    ) -> None:
        self.paths = [Path(image_root) / p for p in rows["path"]]
        self.sample_ids = rows["sample_id"].astype(str).tolist()
        self.labels = torch.tensor(rows[label_column].to_numpy(copy=True), dtype=torch.long)
        self.transform, self.channels, self.seed = transform, channels, seed
        self.epoch = 0
        self.images = decoded_images(self.paths, channels) if cache else None

    @classmethod
    def from_manifest(
        cls, manifest: Manifest, split: str, transform=None, **kwargs
    ) -> ImageDataset:
        return cls(manifest.split(split), manifest.image_root, transform, **kwargs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, row: int) -> np.ndarray:
        """The decoded H x W x C uint8 image of ``row`` (from the cache where there is one)."""
        if self.images is not None:
            return np.asarray(self.images[row])
        try:
            return load_image(self.paths[row], self.channels)
        except BadImageError as error:
            raise BadImageError(f"sample {self.sample_ids[row]!r}: {error}") from None

    def __getitem__(self, row: int):
        image = self.image(row)
        if self.transform is not None:
            seed_transform(self.transform, self.seed, self.epoch, row)
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
        checked = pool.map(_check, paths, chunksize=64)
        reasons = list(progress(checked, total=len(paths), desc="checking images", unit="img",
                                leave=False))  # fmt: skip
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
            f"data.on_bad_image: skip to drop them\n  " + "\n  ".join(lines) + more
        )
    return manifest.with_table(manifest.table[~manifest.table["sample_id"].isin(bad["sample_id"])])
