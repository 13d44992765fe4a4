"""Predicting a folder of any size with the registered model (``noisytail predict``).

The files go through the pyfunc model in requests of ``batch`` paths, the same path a served
request takes (limits, micro-batches, the members' precision), with the model's path root set to
the folders given, so nothing outside them is read. The folders are walked lazily, in sorted
order, as the requests go (the first prediction does not wait for a walk of millions of files),
and rows are appended to the CSV as each request returns: memory stays flat and a long run's
finished rows are on disk. A file the model refuses
(not an image, too large) gets its message in the ``error`` column; the others are predicted.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd

from noisytail.data.sources import IMAGE_SUFFIXES
from noisytail.progress import progress

COLUMNS = ["path", *(f"{f}_{r}" for r in range(1, 6) for f in ("class", "prob")), "error"]


def image_files(inputs: Sequence[str | os.PathLike]) -> Iterator[Path]:
    """The files named, and every image file under the folders named (links to folders not
    followed), in sorted order, found as they are needed."""
    for item in map(Path, inputs):
        if not item.exists():
            raise FileNotFoundError(f"{item}: no such file or folder")
    for item in map(Path, inputs):
        yield from _walk(item) if item.is_dir() else [item]


def _walk(folder: Path) -> Iterator[Path]:
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):  # a linked folder may loop or lead out
            yield from _walk(Path(entry.path))
        elif entry.is_file() and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield Path(entry.path)


def chunks(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def predict_rows(model, files: Iterable[Path], root: Path, batch: int) -> Iterator[dict]:
    """One row per file, in order: its top-5, or its error."""
    from mlflow.exceptions import MlflowException

    def ask(chunk: Sequence[Path]) -> pd.DataFrame:
        # relative to the root as named (links are resolved, and refused outside it, by the model)
        paths = [os.path.relpath(os.path.abspath(p), root) for p in chunk]
        return model.predict(pd.DataFrame({"path": paths}))

    for chunk in chunks(files, batch):
        try:
            table = ask(chunk)
        except MlflowException:  # one bad file: find it, predict the rest one by one
            for path in chunk:
                try:
                    yield {"path": str(path), **ask([path]).iloc[0].to_dict(), "error": ""}
                except MlflowException as error:
                    yield {"path": str(path), "error": error.message}
            continue
        for path, (_, row) in zip(chunk, table.iterrows(), strict=True):
            yield {"path": str(path), **row.to_dict(), "error": ""}


def predict_to_csv(
    model_uri: str, inputs: Sequence[str | os.PathLike], out: str | os.PathLike | None,
    batch: int = 64,
) -> Iterator[dict]:  # fmt: skip
    """Predict ``inputs`` (files and folders) with the model at ``model_uri``; rows are written
    to ``out`` (CSV) as they come and yielded."""
    import mlflow

    files = image_files(inputs)
    first = next(files, None)
    if first is None:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
                                f"{', '.join(map(str, inputs))}")  # fmt: skip
    files = itertools.chain([first], files)
    # every file lies under a folder named or beside a file named: the root is known at once
    named = [Path(os.path.abspath(i)) for i in inputs]
    root = Path(os.path.commonpath([p if p.is_dir() else p.parent for p in named]))
    config = {"path_root": str(root), "max_images": batch}
    model = mlflow.pyfunc.load_model(model_uri, model_config=config)
    handle = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        handle = open(out, "w", newline="")  # noqa: SIM115 (closed below, rows flushed as they come)
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
    try:
        for row in progress(predict_rows(model, files, root, batch), desc="predict",
                            unit="image"):  # fmt: skip
            if handle is not None:
                writer.writerow(row)
            yield row
    finally:
        if handle is not None:
            handle.close()
