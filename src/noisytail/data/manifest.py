"""The manifest: the one table every stage reads and writes.

A manifest is a parquet table of samples (``sample_id``, ``path``, ``label``, ``split`` and
optional extras such as ``true_label``) plus a class map stored beside it as JSON. Images are
never copied between stages: a cleaning round writes a new manifest, and DVC versions that.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from noisytail.errors import NoisytailError

REQUIRED_COLUMNS = ("sample_id", "path", "label", "split")
SPLITS = ("train", "val", "test")
MAX_LISTED = 20  # rows named in one error message; the rest are counted


class ManifestError(NoisytailError, ValueError):
    """A manifest that cannot be used; the message names the file, rows or column at fault."""


@dataclass(frozen=True)
class Manifest:
    """A sample table, its class names (index -> name) and the folder its paths are relative to."""

    table: pd.DataFrame
    classes: tuple[str, ...]
    image_root: Path

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split, index reset (row i is dataset item i)."""
        return self.table[self.table["split"] == name].reset_index(drop=True)

    def resolve(self, path: str) -> Path:
        return self.image_root / path  # an absolute `path` stays as it is

    def with_table(self, table: pd.DataFrame) -> Manifest:
        return replace(self, table=table.reset_index(drop=True))

    @property
    def fully_verified(self) -> bool:
        """Every sample has a known true label (benchmarks): shot groups can use clean counts."""
        return "true_label" in self.table and bool((self.table["true_label"] >= 0).all())

    def class_counts(self, split: str = "train", column: str = "label") -> pd.Series:
        """Samples per class index (all classes, zeros included)."""
        rows = self.table[self.table["split"] == split]
        return rows[column].value_counts().reindex(range(self.num_classes), fill_value=0)


def class_map_path(manifest_path: Path) -> Path:
    """The class map beside a manifest: ``manifest.parquet`` -> ``manifest.classes.json``."""
    return manifest_path.with_name(manifest_path.stem + ".classes.json")


def _name_rows(table: pd.DataFrame, mask: pd.Series) -> str:
    bad = table.loc[mask, "sample_id"] if "sample_id" in table else table.index[mask]
    listed = ", ".join(map(str, list(bad[:MAX_LISTED])))
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return f"{len(bad)} row(s): {listed}{more}"


def validation_problems(
    table: pd.DataFrame, classes: Sequence[str], required_splits: Iterable[str] = ("train",)
) -> list[str]:
    """Every problem with a manifest table, each naming the rows or column concerned."""
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        return [f"missing column(s) {missing}; a manifest needs {list(REQUIRED_COLUMNS)}"]
    problems = []
    if len(set(classes)) != len(classes):
        problems.append("the class map has duplicate class names")
    duplicated = table["sample_id"].duplicated(keep=False)
    if duplicated.any():
        problems.append(f"duplicate sample_id in {_name_rows(table, duplicated)}")
    if table["path"].isna().any():
        problems.append(f"empty path in {_name_rows(table, table['path'].isna())}")
    for column in ("label", "true_label"):
        if column not in table:
            continue
        labels = pd.to_numeric(table[column], errors="coerce")
        lowest = -1 if column == "true_label" else 0  # true_label -1: not verified
        unknown = labels.isna() | (labels < lowest) | (labels >= len(classes)) | (labels % 1 != 0)
        if unknown.any():
            problems.append(
                f"unknown {column} (not a class index 0..{len(classes) - 1}) in "
                f"{_name_rows(table, unknown)}"
            )
    bad_split = ~table["split"].isin(SPLITS)
    if bad_split.any():
        problems.append(f"split not in {list(SPLITS)} in {_name_rows(table, bad_split)}")
    for split in required_splits:
        if not (table["split"] == split).any():
            problems.append(f"split {split!r} is empty")
    train_labels = pd.to_numeric(table.loc[table["split"] == "train", "label"], errors="coerce")
    known = train_labels[(train_labels >= 0) & (train_labels < len(classes))].astype(np.int64)
    empty = np.flatnonzero(np.bincount(known, minlength=len(classes)) == 0)  # one count a class
    if len(empty) and (table["split"] == "train").any():
        named = ", ".join(f"{i} ({classes[i]})" for i in empty[:MAX_LISTED])
        more = f" and {len(empty) - MAX_LISTED} more" if len(empty) > MAX_LISTED else ""
        problems.append(f"class(es) with zero training samples: {named}{more}")
    return problems


def validate(
    table: pd.DataFrame,
    classes: Sequence[str],
    source: str | os.PathLike = "<memory>",
    required_splits: Iterable[str] = ("train",),
) -> None:
    """Raise ``ManifestError`` listing every problem at once, or return quietly."""
    problems = validation_problems(table, classes, required_splits)
    if problems:
        raise ManifestError(f"invalid manifest {source}:\n  - " + "\n  - ".join(problems))


def read_manifest(path: str | os.PathLike, required_splits: Iterable[str] = ("train",)) -> Manifest:
    """Read and validate a manifest and its class map."""
    path = Path(path)
    sidecar = class_map_path(path)
    try:
        table = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types; all mean the same to a user
        raise ManifestError(f"cannot read manifest {path}: {error}") from error
    try:
        meta = json.loads(sidecar.read_text())
        classes = tuple(meta["classes"])
    except (OSError, ValueError, KeyError) as error:
        raise ManifestError(f"cannot read class map {sidecar}: {error!r}") from error
    validate(table, classes, path, required_splits)
    root = Path(meta.get("image_root", "."))
    return Manifest(table, classes, root if root.is_absolute() else (path.parent / root).resolve())


def write_manifest(manifest: Manifest, path: str | os.PathLike) -> Path:
    """Validate and write atomically: a failure leaves any previous manifest at `path` intact."""
    path = Path(path)
    validate(manifest.table, manifest.classes, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = os.path.relpath(manifest.image_root.resolve(), path.parent.resolve())
    meta = {"classes": list(manifest.classes), "image_root": root}
    for target, write in (
        (path, lambda tmp: manifest.table.to_parquet(tmp, index=False)),
        (class_map_path(path), lambda tmp: tmp.write_text(json.dumps(meta, indent=1))),
    ):
        tmp = target.with_name(target.name + ".tmp")
        write(tmp)
        os.replace(tmp, target)
    return path


def manifest_digest(table: pd.DataFrame) -> str:
    """A content hash of the table (order-sensitive), for tracking and reproducibility checks."""
    hashed = pd.util.hash_pandas_object(table, index=False).to_numpy()
    columns = ",".join(map(str, table.columns)).encode()
    return hashlib.sha256(columns + hashed.tobytes()).hexdigest()[:16]
