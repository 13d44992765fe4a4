"""Batched inference that stores only the top-k classes of each sample.

At 2.5M images x 50,030 classes an N x C probability matrix would be 500 GB; here memory is
O(N * k): each batch is reduced to its top-k indices and probabilities (plus the probability of
the given label, and optionally the embedding) before it leaves the device. The top-k columns
are Arrow fixed-size lists over one flat array (``matrix_column``), in memory and in parquet:
no Python object per row, and ``top_k_arrays`` reads them back as N x k arrays without a copy
per row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from noisytail.config.data import AugmentConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest, ManifestError
from noisytail.data.transforms import eval_transform
from noisytail.metrics import classification_report
from noisytail.progress import progress

if TYPE_CHECKING:  # models are only called here
    from noisytail.models.network import NoisyTailNet


@torch.no_grad()
def predict_top_k(
    model: NoisyTailNet,
    dataset: ImageDataset,
    accelerator: Accelerator,
    *,
    top_k: int = 10,
    batch_size: int = 256,
    workers: int = 2,
    with_embedding: bool = False,
) -> pd.DataFrame:
    """One row per dataset item, in dataset order, predicted exactly once across processes.

    Columns: ``sample_id, label, topk_index, topk_prob, label_prob[, embedding]``. Embeddings
    are kept as float16 rows of one N x d array, written at their dataset row as batches arrive
    (2.5M x 512: 2.6 GB; float32 batches concatenated and re-ordered had taken three copies of
    5 GB), and stored as float16 (the clean stage computes on float16 embeddings anyway).
    """
    top_k = min(top_k, model.num_classes)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, num_workers=workers))
    model = model.to(accelerator.device).eval()
    rows, indices, probs, label_probs, embeddings = [], [], [], [], None
    for images, labels, row in progress(loader, desc="predicting", unit="batch", leave=False,
                                        enabled=accelerator.is_local_main_process):  # fmt: skip
        with accelerator.autocast():
            features = model.features(images)
            logits = model.head(features)
        p = logits.float().softmax(dim=1)
        top_p, top_i = p.topk(top_k, dim=1)
        label_p = p.gather(1, labels[:, None]).squeeze(1)
        batch = (row, top_i, top_p, label_p) + ((features.float(),) if with_embedding else ())
        gathered = accelerator.gather_for_metrics(batch)  # drops the padding of the last batch
        rows.append(gathered[0].cpu().numpy())
        indices.append(gathered[1].cpu().numpy().astype(np.int32))
        probs.append(gathered[2].cpu().numpy().astype(np.float32))
        label_probs.append(gathered[3].cpu().numpy().astype(np.float32))
        if with_embedding:
            if embeddings is None:
                embeddings = np.empty((len(dataset), gathered[4].shape[1]), dtype=np.float16)
            embeddings[rows[-1]] = gathered[4].half().cpu().numpy()

    order = dataset_order(rows, len(dataset))
    table = pd.DataFrame({
        "sample_id": dataset.sample_ids,
        "label": dataset.labels.numpy(),
        "topk_index": matrix_column(np.concatenate(indices)[order]),
        "topk_prob": matrix_column(np.concatenate(probs)[order]),
        "label_prob": np.concatenate(label_probs)[order],
    })  # fmt: skip
    if with_embedding:  # one view per row into the array, not a copy
        table["embedding"] = list(embeddings)
    return table


def dataset_order(rows: list[np.ndarray], size: int) -> np.ndarray:
    """The permutation that puts gathered batches (``rows``: each item's dataset row) back in
    dataset order; checks that every row came back exactly once (a sharded loader that padded
    or dropped items would misalign the outputs silently)."""
    row = np.concatenate(rows)
    order = np.argsort(row, kind="stable")
    if not np.array_equal(row[order], np.arange(size)):
        raise RuntimeError(f"prediction covered {len(np.unique(row))} of {size} samples")
    return order


def evaluate_split(
    model: NoisyTailNet,
    manifest: Manifest,
    split: str,
    image_size: int,
    accelerator: Accelerator,
    workers: int = 2,
    augment: AugmentConfig = AugmentConfig(),
) -> dict[str, float]:
    """Top-1, mean class error and many/medium/few accuracy of ``model`` on one split, seen at
    ``image_size`` in the training geometry of ``augment`` (see ``data.transforms``).

    Classes are grouped by their clean training count where the truth is known (benchmarks),
    else by their given count.
    """
    channels = model.config.in_chans
    dataset = ImageDataset.from_manifest(
        manifest, split, eval_transform(image_size, channels, augment), channels=channels
    )
    table = predict_top_k(model, dataset, accelerator, top_k=1, workers=workers)
    column = "true_label" if manifest.fully_verified else "label"
    return classification_report(
        column_matrix(table["topk_index"])[:, 0], dataset.labels.numpy(), manifest.num_classes,
        manifest.class_counts("train", column).to_numpy(),
    )  # fmt: skip


def evaluate_splits(
    model: NoisyTailNet,
    manifest: Manifest,
    image_size: int,
    accelerator: Accelerator,
    splits: tuple[str, ...] = ("val", "test"),
    workers: int = 2,
    augment: AugmentConfig = AugmentConfig(),
) -> dict[str, dict[str, float]]:
    """``evaluate_split`` on each of ``splits`` that the manifest has, rounded to 3 decimals;
    a split it lacks (an image folder has no test split) is left out, and said so."""
    scored = {}
    for split in splits:
        if not (manifest.table["split"] == split).any():
            accelerator.print(f"no {split!r} split in the manifest: not scored on it")
            continue
        report = evaluate_split(model, manifest, split, image_size, accelerator, workers, augment)
        scored[split] = {k: round(v, 3) for k, v in report.items()}
    return scored


def model_view(
    model: NoisyTailNet, size: int = 32, augment: AugmentConfig = AugmentConfig()
) -> tuple[int, AugmentConfig]:
    """The image size and crop geometry ``model`` was trained at (saved in its ``model.json``);
    ``size`` and ``augment`` only for a model saved without one (older versions)."""
    if not model.view:
        return size, augment
    view = model.view
    stats = {k: view[k] for k in ("mean", "std") if view.get(k)}  # AugmentConfig makes tuples
    return view["image_size"], AugmentConfig(crop=view["crop"], margin=view["margin"], **stats)


def check_classes(classes: tuple[str, ...], manifest: Manifest, model_path: str) -> None:
    """A model scored against another class list would be silently wrong: refuse it."""
    if tuple(classes) != tuple(manifest.classes):
        theirs, ours = list(classes)[:5], list(manifest.classes)[:5]
        raise ManifestError(
            f"{model_path} was trained on {len(classes)} classes {theirs}..., the manifest has "
            f"{manifest.num_classes} {ours}...: evaluate it on the data it was trained for"
        )


def write_predictions(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``table`` as parquet, without pandas' metadata: it names the top-k columns' list dtype by
    a string pandas cannot parse back, and ``pd.read_parquet`` of any column would then fail."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrow = pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(arrow, tmp)
    os.replace(tmp, path)
    return path


def read_predictions(path: str | os.PathLike, embedding: bool = True) -> pd.DataFrame:
    """The stored predictions, top-k columns kept in Arrow (see ``matrix_column``);
    ``embedding=False`` leaves out the embedding column (read it with ``read_embeddings``: one
    array, not a Python object per row)."""
    names = pq.ParquetFile(path).schema_arrow.names
    columns = [c for c in names if embedding or c != "embedding"]
    arrow = pq.read_table(path, columns=columns)
    keep = [c for c in columns if c in TOP_K_COLUMNS]
    # (files written before write_predictions dropped pandas' metadata name the list dtypes by
    # strings pandas cannot parse back)
    table = arrow.drop_columns(keep).replace_schema_metadata(None).to_pandas()
    for name in keep:  # in their stored place, one chunk (parquet reads 131,072 rows a batch):
        column = arrow[name].combine_chunks()  # combined here once, not on every later read
        table.insert(columns.index(name), name, pd.arrays.ArrowExtensionArray(column))
    return table


def read_embeddings(path: str | os.PathLike, batch_rows: int = 65536) -> np.ndarray:
    """The ``embedding`` column of stored predictions as one float16 N x d array, read a batch
    of rows at a time (2.5M x 512: 2.6 GB, where rows of float32 objects would take 5.4 GB)."""
    stored = pq.ParquetFile(path)
    if "embedding" not in stored.schema_arrow.names:
        raise ManifestError(f"{path} has no embedding column: re-run the predict stage with "
                            "--for-cleaning (or --embedding)")  # fmt: skip
    out, start = None, 0
    for batch in stored.iter_batches(batch_size=batch_rows, columns=["embedding"]):
        column = batch.column(0)
        values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
        if out is None:
            out = np.empty((stored.metadata.num_rows, values.shape[1]), dtype=np.float16)
        out[start : start + len(values)] = values
        start += len(values)
    if out is None:
        raise ManifestError(f"{path} holds no predictions")
    return out


TOP_K_COLUMNS = ("topk_index", "topk_prob")


def matrix_column(values: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """An N x k array as one column of fixed-size lists over its flat values (one Arrow buffer;
    a numpy object per row costs about 100 bytes and a Python call each time it is stacked)."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pd.arrays.ArrowExtensionArray(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))


def column_matrix(column: pd.Series) -> np.ndarray:
    """The N x k array of a list column: read from Arrow's flat values where it is held in
    Arrow (as ``matrix_column`` and ``read_predictions`` make it), else stacked row by row."""
    if isinstance(column.array, pd.arrays.ArrowExtensionArray):
        arrow = pa.array(column.array)  # a slice of the column flattens to its own rows only
        if isinstance(arrow, pa.ChunkedArray):  # read in batches, or concatenated frames
            arrow = arrow.combine_chunks()
        flat = arrow.flatten().to_numpy()
        if pa.types.is_fixed_size_list(arrow.type):
            return flat.reshape(len(arrow), arrow.type.list_size)
        width = len(flat) // max(len(arrow), 1)
        if len(flat) == width * len(arrow):  # every row the same length
            return flat.reshape(len(arrow), width)
    return np.stack(column.to_numpy())


def top_k_arrays(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(index, prob)``, each N x k, from the top-k columns (read-only where they are views of
    Arrow's buffers: copy before writing into them)."""
    return column_matrix(table["topk_index"]), column_matrix(table["topk_prob"])
