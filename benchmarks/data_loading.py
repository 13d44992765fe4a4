"""Data-loading throughput (images/s): the default 32 px PNG path with the full augmentation,
and 256 px JPEGs, with 0, 1 and 2 DataLoader workers.

    python benchmarks/data_loading.py [--manifest data/prepared/manifest.parquet]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import print_table, write_result
from PIL import Image
from torch.utils.data import DataLoader

from noisytail.config.data import AugmentConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import train_transform

FULL_AUGMENT = AugmentConfig(
    hue_saturation=0.5, brightness_contrast=0.5, gaussian_blur=0.5,
    horizontal_flip=0.5, vertical_flip=0.5, coarse_dropout=0.5,
)  # fmt: skip


def throughput(dataset: ImageDataset, workers: int, images: int, batch_size: int = 128) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    seen, start = 0, None
    for batch, _, _ in loader:
        if start is None:  # exclude worker start-up and the first batch
            start = time.perf_counter()
            continue
        seen += len(batch)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def jpeg_rows(folder: Path, count: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    for i in range(count):  # smooth random photos: JPEG decode cost is realistic
        small = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        photo = Image.fromarray(small).resize((256, 256), Image.BICUBIC)
        photo.save(folder / f"{i}.jpg", quality=90)
    paths = [f"{i}.jpg" for i in range(count)]
    return pd.DataFrame({"sample_id": paths, "path": paths, "label": 0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.parquet")
    parser.add_argument("--images", type=int, default=3000, help="images timed per setting")
    args = parser.parse_args()

    manifest = read_manifest(args.manifest)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "FMNIST PNG 28->32 px, full augmentation": ImageDataset.from_manifest(
                manifest, "train", train_transform(32, FULL_AUGMENT)
            ),
            "JPEG 256 px -> 224 px, full augmentation": ImageDataset(
                jpeg_rows(Path(tmp), 600), tmp, train_transform(224, FULL_AUGMENT)
            ),
        }
        for name, dataset in cases.items():
            for workers in (0, 1, 2):
                images = args.images if "PNG" in name else args.images // 4
                rate = throughput(dataset, workers, images)
                rows.append({"case": name, "workers": workers, "images_per_s": round(rate)})
                print_table(rows[-1:])
    print()
    print_table(rows)
    write_result("data_loading", rows)


if __name__ == "__main__":
    main()
