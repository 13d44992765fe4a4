"""SKU-LT-N: an AliProducts-shaped benchmark, synthetic, with the truth kept (docs/sku_lt_n.md).

C classes (default 50,030) of "products" in families of look-alike sibling SKUs, a long tail
shaped like AliProducts' (a few classes with thousands of images, most with a handful, many with
one to three), label noise that flips mostly to a sibling or into the head classes, and clean val
and test splits that cover every class. Every image is a real PNG file and the manifest a table,
exactly as a user's data would be; they are written in parallel, in chunks whose randomness
depends on the chunk alone (the same files whatever the number of workers).

An image: a background colour and an object (a rectangle, an ellipse or a diamond) of another
colour, both the family's; on the object a 3 x 3 grid of colour patches, seven of them the
family's and two the sibling's index in base 6 (with families of up to 6, the default 5, the
second is 0: siblings differ in one patch only). Each image moves, scales
and lights its object at random and adds pixel noise: the class is learnable from the pixels,
by position-invariant features, and siblings are easily confused.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from noisytail.config.data import SkuConfig
from noisytail.data.manifest import Manifest
from noisytail.progress import progress

BACKGROUNDS = np.array([[236, 236, 236], [250, 240, 215], [205, 225, 245], [40, 40, 48],
                        [220, 245, 220], [245, 215, 225], [120, 120, 130], [250, 250, 190]],
                       dtype=np.float32)  # fmt: skip
OBJECTS = np.array([[200, 30, 30], [30, 90, 200], [30, 150, 60], [240, 170, 20],
                    [120, 40, 160], [20, 20, 20], [250, 250, 250], [150, 90, 40]],
                   dtype=np.float32)  # fmt: skip
PATCHES = np.array([[255, 255, 255], [0, 0, 0], [230, 40, 40], [40, 80, 230], [250, 220, 40],
                    [40, 190, 90]], dtype=np.float32)  # fmt: skip
SHAPES = 3  # rectangle, ellipse, diamond
FAMILY_PATCHES, SIBLING_PATCHES = 7, 2
CHUNK = 2048  # images rendered (and seeded) together


def class_counts(classes: int, images: int, head: int, spread: float = 1.6) -> np.ndarray:
    """Training images of each class, largest first: log-normal quantiles ``exp(mu + spread *
    z)`` rounded and held to [1, ``head``], ``mu`` found by bisection so that they sum to
    ``images``. At AliProducts' mean of 50 a class, most classes have fewer than 20, a sixth one
    to three and a few thousands; at a mean of 10 (500k x 50,030) the median is 3."""
    from scipy.special import ndtri

    if not classes <= images <= classes * head:
        raise ValueError(f"benchmark.sku_lt_n: images must be between classes ({classes}) and "
                         f"classes x head ({classes * head}), got {images}")  # fmt: skip
    z = -ndtri((np.arange(classes) + 0.5) / classes)  # falling: the largest class first

    def counts(mu: float) -> np.ndarray:
        return np.clip(np.rint(np.exp(mu + spread * z)), 1, head).astype(np.int64)

    low, high = -50.0, 50.0  # the sum grows with mu
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if counts(middle).sum() < images else (low, middle)
    found = counts(low)
    short = images - int(found.sum())  # rounding: the rest to the largest classes below head
    room = np.flatnonzero(found < head)[:short]
    found[room] += 1
    return found


def family_codes(families: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Distinct codes for ``families`` families: background, object colour, shape, patches."""
    capacity = len(BACKGROUNDS) * len(OBJECTS) * SHAPES * len(PATCHES) ** FAMILY_PATCHES
    if families > capacity:
        raise ValueError(f"benchmark.sku_lt_n: at most {capacity} families")
    code = rng.choice(capacity, size=families, replace=False)
    background, code = code % len(BACKGROUNDS), code // len(BACKGROUNDS)
    colour, code = code % len(OBJECTS), code // len(OBJECTS)
    shape, code = code % SHAPES, code // SHAPES
    patches = np.stack([(code // len(PATCHES) ** i) % len(PATCHES)
                        for i in range(FAMILY_PATCHES)], axis=1)  # fmt: skip
    return {"background": background, "colour": colour, "shape": shape, "patches": patches}


def class_looks(config: SkuConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per class: its family's code and its two sibling patches (the sibling index in base 6)."""
    family = np.arange(config.classes) // config.family_size
    sibling = np.arange(config.classes) % config.family_size
    codes = family_codes(int(family.max()) + 1, rng)
    own = np.stack([sibling % len(PATCHES), sibling // len(PATCHES)], axis=1)
    return {"background": codes["background"][family], "colour": codes["colour"][family],
            "shape": codes["shape"][family],
            "patches": np.concatenate([codes["patches"][family], own], axis=1)}  # fmt: skip


def render(labels: np.ndarray, looks: dict[str, np.ndarray], size: int,
           rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """N x size x size x 3 uint8 images of ``labels``: each object moved, scaled and lit at
    random, and pixel noise on top."""
    n = len(labels)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    half = size * rng.uniform(0.33, 0.41, n).astype(np.float32)[:, None, None]
    cy, cx = (size / 2 + rng.uniform(-size / 10, size / 10, (2, n)).astype(np.float32))[
        :, :, None, None]  # fmt: skip
    dy, dx = (y - cy) / half, (x - cx) / half
    shape = looks["shape"][labels][:, None, None]
    inside = np.where(
        shape == 0,
        np.maximum(abs(dy), abs(dx)) <= 1,
        np.where(shape == 1, dy**2 + dx**2 <= 1, abs(dy) + abs(dx) <= 1.15),
    )
    # the 3 x 3 patch grid on the object's inner square
    row, col = np.floor((dy + 0.6) / 0.4), np.floor((dx + 0.6) / 0.4)
    on_grid = (row >= 0) & (row < 3) & (col >= 0) & (col < 3) & inside
    patch = (np.clip(row, 0, 2) * 3 + np.clip(col, 0, 2)).astype(np.int64)
    patch_colour = PATCHES[np.take_along_axis(looks["patches"][labels], patch.reshape(n, -1),
                                              axis=1).reshape(n, size, size)]  # fmt: skip
    image = np.where(inside[..., None], OBJECTS[looks["colour"][labels]][:, None, None],
                     BACKGROUNDS[looks["background"][labels]][:, None, None])  # fmt: skip
    image = np.where(on_grid[..., None], patch_colour, image)
    light = rng.uniform(0.8, 1.15, (n, 1, 1, 1)).astype(np.float32)
    image = image * light + rng.normal(0, 10, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def noisy_labels(true: np.ndarray, counts: np.ndarray, config: SkuConfig,
                 rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Flip a share ``eta`` of the labels (each class's first image excepted): with probability
    ``sibling_noise`` to another sibling of the family (where it has one), else to a class drawn
    in proportion to its size (the head soaks up the rest of the noise, as on the web); never to
    the true class."""
    label = true.copy()
    flip = rng.random(len(true)) < config.eta
    # each class keeps one image under its own label (its first): a class of one image whose
    # label flipped would have no training sample at all
    _, first_of_class = np.unique(true, return_index=True)
    flip[first_of_class] = False
    flip = np.flatnonzero(flip)
    family_size = np.minimum(config.family_size,
                             config.classes - (true[flip] // config.family_size)
                             * config.family_size)  # fmt: skip
    to_sibling = (rng.random(len(flip)) < config.sibling_noise) & (family_size > 1)
    first = true[flip] // config.family_size * config.family_size
    offset = 1 + (rng.random(len(flip)) * (family_size - 1)).astype(np.int64)
    sibling = first + (true[flip] - first + offset) % family_size
    label[flip[to_sibling]] = sibling[to_sibling]
    elsewhere = flip[~to_sibling]
    prior = counts / counts.sum()
    draw = rng.choice(len(counts), size=len(elsewhere), p=prior)
    while (same := draw == true[elsewhere]).any():  # redraw the few that hit their own class
        draw[same] = rng.choice(len(counts), size=int(same.sum()), p=prior)
    label[elsewhere] = draw
    return label


_WORKER: dict = {}  # what every chunk of one import shares, set once per worker process


def _start_worker(root: Path, looks: dict[str, np.ndarray], size: int) -> None:
    _WORKER.update(root=root, looks=looks, size=size)


def _write_chunk(task: tuple) -> None:
    """One chunk of images, rendered with its own seed and written as PNG files."""
    paths, labels, seed = task
    root, looks, size = _WORKER["root"], _WORKER["looks"], _WORKER["size"]
    images = render(labels, looks, size, np.random.default_rng(seed))
    for path, image in zip(paths, images):
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():  # resumable: a re-run writes what is missing
            Image.fromarray(image).save(target)


def import_sku_lt_n(out_dir: str | os.PathLike, config: SkuConfig, seed: int = 0) -> Manifest:
    """SKU-LT-N (docs/sku_lt_n.md): PNG files under ``out_dir`` and their manifest."""
    rng = np.random.default_rng(seed)
    looks = class_looks(config, rng)
    counts = np.zeros(config.classes, dtype=np.int64)
    order = rng.permutation(config.classes)  # order[rank] is a class: sizes mix in families
    counts[order] = class_counts(config.classes, config.images, config.head, config.spread)
    true = np.repeat(np.arange(config.classes), counts)
    true = true[rng.permutation(len(true))]
    label = noisy_labels(true, counts, config, rng)
    every = np.arange(config.classes)
    splits = {"train": (true, label),
              "val": (np.repeat(every, config.val_per_class),) * 2,
              "test": (np.repeat(every, config.test_per_class),) * 2}  # fmt: skip
    definition = {k: v for k, v in asdict(config).items() if k != "workers"}  # what the files are
    digest = hashlib.sha256(json.dumps([definition, seed]).encode()).hexdigest()[:10]
    root = Path(out_dir).resolve()
    frames, tasks, chunk_seed = [], [], 0
    for split, (truth, given) in splits.items():
        ids = [f"{split}-{i:07d}" for i in range(len(truth))]
        paths = [f"sku_lt_n-{digest}/{split}/{i // 1000:04d}/{i:07d}.png"
                 for i in range(len(truth))]  # fmt: skip
        frames.append(pd.DataFrame({"sample_id": ids, "path": paths, "label": given,
                                    "split": split, "true_label": truth}))  # fmt: skip
        for start in range(0, len(truth), CHUNK):
            tasks.append((paths[start : start + CHUNK], truth[start : start + CHUNK],
                          [seed, chunk_seed]))  # fmt: skip
            chunk_seed += 1
    workers = config.workers or os.cpu_count() or 1
    with ProcessPoolExecutor(
        workers, initializer=_start_worker, initargs=(root, looks, config.image_size)
    ) as pool:
        done = pool.map(_write_chunk, tasks, chunksize=4)
        for _ in progress(done, total=len(tasks), desc="SKU-LT-N images", unit="chunk"):
            pass
    classes = tuple(f"sku{c:05d}" for c in range(config.classes))
    return Manifest(pd.concat(frames, ignore_index=True), classes, root)
