"""Importers: turn what users have (IDX files, image folders, CSV/parquet tables) into manifests."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from noisytail.config.data import FASHION_MNIST_DIR
from noisytail.data.benchmark import make_long_tail_noisy
from noisytail.data.manifest import Manifest, ManifestError, validate
from noisytail.progress import progress

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
INSTALL_HINT = (
    "Fashion-MNIST is missing. Install it with `apt-get install dataset-fashion-mnist` "
    "(as root), or put the four IDX files {files} in {dir} by hand "
    "(or point params.yaml data.fashion_mnist_dir at the folder that holds them)."
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped IDX file (uint8 images: 16-byte header; labels: 8-byte header)."""
    path = Path(path)
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({array.size} values for shape {shape})")
    return array.reshape(shape)


def require_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR) -> Path:
    directory = Path(directory)
    missing = [name for name in FASHION_MNIST_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            INSTALL_HINT.format(files=", ".join(FASHION_MNIST_FILES), dir=directory)
            + f" Missing: {', '.join(missing)}."
        )
    return directory


def _write_pngs(images: np.ndarray, indices: np.ndarray, folder: Path, desc: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in progress(indices, desc=desc, unit="img", leave=False):
        name = f"{int(index):05d}.png"
        target = folder / name
        if not target.exists():  # resumable: a re-run only writes what is missing
            Image.fromarray(images[index]).save(target)
        names.append(f"{folder.name}/{name}")
    return names


def import_fmnist_lt_n(
    out_dir: str | os.PathLike,
    *,
    source_dir: str | os.PathLike = FASHION_MNIST_DIR,
    val_per_class: int = 100,
    n_max: int = 5000,
    rho: float = 100.0,
    noise_type: str = "imb",
    eta: float = 0.4,
    test_per_class: int = 0,
    seed: int = 0,
) -> Manifest:
    """FMNIST-LT-N (shared/BENCHMARK.md): PNG files under ``out_dir`` and their manifest.

    ``test_per_class`` k > 0 keeps the first k test images of each class in the official file's
    order (the same subset for every seed): for profiles whose ten-crop views of 10,000 images
    would cost more than their training."""
    source_dir = require_fashion_mnist(source_dir)
    train_images = read_idx(source_dir / FASHION_MNIST_FILES[0])
    train_labels = read_idx(source_dir / FASHION_MNIST_FILES[1])
    test_images = read_idx(source_dir / FASHION_MNIST_FILES[2])
    test_labels = read_idx(source_dir / FASHION_MNIST_FILES[3])
    split = make_long_tail_noisy(
        train_labels, val_per_class=val_per_class, n_max=n_max, rho=rho,
        noise_type=noise_type, eta=eta, seed=seed,
    )  # fmt: skip
    out_dir = Path(out_dir)
    used_train = np.sort(np.concatenate([split.train_index, split.val_index]))
    train_paths = dict(
        zip(used_train, _write_pngs(train_images, used_train, out_dir / "train", "train PNGs"))
    )
    test_index = np.arange(len(test_labels))
    if test_per_class:
        rank = pd.Series(test_labels).groupby(test_labels).cumcount().to_numpy()
        test_index = test_index[rank < test_per_class]
    test_paths = _write_pngs(test_images, test_index, out_dir / "test", "test PNGs")

    def rows(index, labels, true_labels, split_name, paths, prefix):
        return pd.DataFrame({
            "sample_id": [f"{prefix}-{i:05d}" for i in index],
            "path": paths,
            "label": np.asarray(labels, dtype=np.int64),
            "split": split_name,
            "true_label": np.asarray(true_labels, dtype=np.int64),
        })  # fmt: skip

    table = pd.concat(
        [
            rows(split.train_index, split.noisy_label, split.true_label, "train",
                 [train_paths[i] for i in split.train_index], "train"),
            rows(split.val_index, train_labels[split.val_index], train_labels[split.val_index],
                 "val", [train_paths[i] for i in split.val_index], "train"),
            rows(test_index, test_labels[test_index], test_labels[test_index], "test", test_paths,
                 "test"),
        ],
        ignore_index=True,
    )  # fmt: skip
    return Manifest(table, FASHION_MNIST_CLASSES, out_dir.resolve())


def _listed(folder: Path) -> list[Path]:
    """The non-hidden files below ``folder`` (``.DS_Store`` and other dot-files left out)."""
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and not f.name.startswith(".")]


def empty_class_folders(root: str | os.PathLike) -> list[str]:
    """Class sub-folders of an image folder that hold no file: skipped, with a warning."""
    return sorted(p.name for p in Path(root).iterdir()
                  if p.is_dir() and not p.name.startswith(".") and not _listed(p))  # fmt: skip


def import_image_folder(root: str | os.PathLike, split: str = "train") -> Manifest:
    """``root/<class_name>/<image>``: one class per sub-folder, classes sorted by name.

    Every non-hidden file is listed, images or not: a stray non-image file is reported by the
    image check (``dataset.find_bad_images``), not silently ignored. A class folder with no file
    is skipped with a warning that names it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"image folder {root} does not exist")
    empty = empty_class_folders(root)
    for name in empty:
        print(f"warning: class folder {root / name} is empty: skipped (no class {name!r})")
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    classes = sorted(p.name for p in folders if p.name not in empty)
    if not classes:
        raise ManifestError(
            f"image folder {root} has no class sub-folders with images (root/<class>/<image>)"
        )
    paths, labels = [], []
    for label, name in enumerate(classes):
        for file in _listed(root / name):
            paths.append(file.relative_to(root).as_posix())
            labels.append(label)
    table = pd.DataFrame(
        {"sample_id": paths, "path": paths, "label": np.asarray(labels, np.int64), "split": split}
    )
    validate(table, classes, root, required_splits=(split,))
    return Manifest(table, tuple(classes), root.resolve())


def import_table(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
) -> Manifest:
    """A CSV or parquet table with ``path,label`` (and optional ``split``, ``sample_id``,
    ``true_label``).

    Labels are class names or integers; relative paths are resolved against ``root`` (default:
    the table's folder). Without ``classes``, the sorted distinct labels are the classes, in
    numeric order when they are all integers (so class index ``i`` is the user's label ``i``).
    ``true_label`` (a verified subset; empty where unknown) is kept for reports only: nothing that
    trains or cleans reads it.
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            raw = pd.read_parquet(path)
        else:
            raw = pd.read_csv(path)
    except Exception as error:
        raise ManifestError(f"cannot read manifest {path}: {error}") from error
    missing = [c for c in ("path", "label") if c not in raw.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {missing}; found {list(raw.columns)}")
    names = raw["label"].astype(str)
    if classes is None:
        distinct = names.unique()
        numeric = all(n.lstrip("-").isdigit() for n in distinct)
        classes = sorted(distinct, key=int) if numeric else sorted(distinct)
    classes = tuple(classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = ~names.isin(index)
    if unknown.any():
        rows = (raw.index[unknown] + 2).tolist()[:20]  # +2: header line, 1-based
        raise ManifestError(
            f"{path}: unknown class in {int(unknown.sum())} row(s) (file lines {rows}): "
            f"{sorted(names[unknown].unique())[:20]}"
        )
    table = pd.DataFrame({
        "sample_id": raw["sample_id" if "sample_id" in raw else "path"].astype(str),
        "path": raw["path"].astype(str),
        "label": names.map(index).astype(np.int64),
        "split": raw["split"].astype(str) if "split" in raw else "train",
    })  # fmt: skip
    if "true_label" in raw:
        truth = raw["true_label"].astype("string").str.removesuffix(".0")  # ints read as floats
        known = truth.notna() & (truth != "")
        wrong = known & ~truth.isin(index)
        if wrong.any():
            rows = (raw.index[wrong] + 2).tolist()[:20]
            raise ManifestError(f"{path}: unknown class in true_label, file lines {rows}: "
                                f"{sorted(truth[wrong].unique())[:20]}")  # fmt: skip
        # -1 where unknown: reports compare only the verified rows
        table["true_label"] = truth.map(index).fillna(-1).astype(np.int64)
    validate(table, classes, path)
    return Manifest(table, classes, Path(root).resolve() if root else path.parent.resolve())
