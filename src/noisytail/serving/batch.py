"""Predicting a folder of any size with the registered model (``noisytail predict``).

The files go through the pyfunc model in requests of ``batch`` paths, the same path a served
request takes (limits, micro-batches, the members' precision), with the model's path root set to
the folders given, so nothing outside them is read. Rows are appended to the CSV as each request
returns: memory stays flat and a long run's finished rows are on disk. A file the model refuses
(not an image, too large) gets its message in the ``error`` column; the others are predicted.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd

from noisytail.data.sources import IMAGE_SUFFIXES
from noisytail.progress import progress

COLUMNS = ["path", *(f"{f}_{r}" for r in range(1, 6) for f in ("class", "prob")), "error"]


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named, and every image file under the folders named (sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and p.is_file())  # fmt: skip
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def predict_rows(model, files: Sequence[Path], root: Path, batch: int) -> Iterator[dict]:
    """One row per file, in order: its top-5, or its error."""
    from mlflow.exceptions import MlflowException

    def ask(chunk: Sequence[Path]) -> pd.DataFrame:
        paths = [str(p.resolve().relative_to(root)) for p in chunk]
        return model.predict(pd.DataFrame({"path": paths}))

    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
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
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in "
                                f"{', '.join(map(str, inputs))}")  # fmt: skip
    root = Path(os.path.commonpath([p.resolve().parent for p in files]))
    config = {"path_root": str(root), "max_images": batch}
    model = mlflow.pyfunc.load_model(model_uri, model_config=config)
    handle = None
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        handle = open(out, "w", newline="")  # noqa: SIM115 (closed below, rows flushed as they come)
        writer = csv.DictWriter(handle, COLUMNS, extrasaction="ignore")
        writer.writeheader()
    try:
        for row in progress(predict_rows(model, files, root, batch), total=len(files),
                            desc="predict", unit="image"):  # fmt: skip
            if handle is not None:
                writer.writerow(row)
            yield row
    finally:
        if handle is not None:
            handle.close()
