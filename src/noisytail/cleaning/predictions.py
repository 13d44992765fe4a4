"""The predictions cleaning decides on: from the round's final model (in-sample, the seed's way),
an early snapshot of it, or out-of-fold (cross-fitting: k models, each trained without one fold
of the training set and predicting only that fold, so no sample is judged by a model that could
have memorised its possibly wrong label).

The judged samples are either the round's own training set or (``cleaning.judge: all``) every
sample of the original training set, so that a sample dropped by a weaker model of an earlier
round is judged again by the better model of this one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from accelerate import Accelerator

from noisytail.config.cleaning import PREDICTION_SOURCES, CleaningConfig
from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest
from noisytail.data.transforms import eval_transform
from noisytail.models.network import load_network
from noisytail.prediction import model_view, predict_top_k
from noisytail.training.recipes import run_recipe


def out_of_fold_predictions(
    manifest: Manifest,
    judged: Manifest,
    folds: int,
    model_config: ModelConfig,
    train_config: TrainConfig,
    augment: AugmentConfig,
    out_dir: str | Path,
    *,
    seed: int = 0,
    top_k: int = 10,
    accelerator: Accelerator,
) -> pd.DataFrame:
    """Cross-fitting: the judged training samples are dealt into ``folds`` folds; model k trains
    on the round's training samples outside fold k (resumable in ``out_dir/fold_<k>``) and
    predicts the judged samples of fold k. Returned in the judged training-split order, with the
    embedding and a ``fold`` column (each fold model has its own embedding space)."""
    if folds < 2:
        raise ValueError(f"cleaning.folds must be >= 2, got {folds}")
    train, candidates = manifest.split("train"), judged.split("train")
    fold = fold_assignment(candidates["label"].to_numpy(), folds, seed)
    fold_of = dict(zip(candidates["sample_id"], fold))
    train_fold = train["sample_id"].map(fold_of).fillna(-1).to_numpy()
    others = manifest.table[manifest.table["split"] != "train"]
    parts = []
    for k in range(folds):
        fold_dir = Path(out_dir) / f"fold_{k}"
        fold_manifest = manifest.with_table(pd.concat([train[train_fold != k], others]))
        accelerator.print(f"fold {k + 1}/{folds}: training on {int((train_fold != k).sum())} "
                          "samples")  # fmt: skip
        run_recipe(RecipeConfig(), model_config, train_config, augment, fold_manifest, fold_dir,
                   seed=seed, accelerator=accelerator)  # fmt: skip
        model, _ = load_network(fold_dir / "model.safetensors")
        held_out = candidates[fold == k].reset_index(drop=True)
        part = _predict(model, held_out, judged.image_root, train_config, augment, top_k,
                        accelerator)  # fmt: skip
        parts.append(part.assign(fold=k))
    return merge_out_of_fold(parts, fold, candidates["sample_id"].to_numpy())


def cleaning_predictions(
    manifest: Manifest,
    judged: Manifest,
    cleaning: CleaningConfig,
    run_dir: str | Path,
    model_config: ModelConfig,
    train_config: TrainConfig,
    augment: AugmentConfig,
    folds_dir: str | Path,
    *,
    seed: int = 0,
    top_k: int = 10,
    accelerator: Accelerator,
) -> pd.DataFrame:
    """Top-k predictions and embeddings of ``judged``'s training split from where
    ``cleaning.predictions`` says: ``run_dir``'s final model (trained on ``manifest``), its
    ``early_epoch`` snapshot, or fold models in ``folds_dir``."""
    if cleaning.predictions not in PREDICTION_SOURCES:
        raise ValueError(f"cleaning.predictions must be one of {PREDICTION_SOURCES}, "
                         f"got {cleaning.predictions!r}")  # fmt: skip
    if cleaning.predictions == "out_of_fold":
        return out_of_fold_predictions(
            manifest, judged, cleaning.folds, model_config, train_config, augment, folds_dir,
            seed=seed, top_k=top_k, accelerator=accelerator,
        )  # fmt: skip
    name = "model.safetensors"
    if cleaning.predictions == "early":
        name = f"model_epoch_{cleaning.early_epoch}.safetensors"
    model, classes = load_network(Path(run_dir) / name)
    if classes != judged.classes:
        raise ValueError(f"{Path(run_dir) / name} was trained on other classes than the manifest")
    return _predict(model, judged.split("train"), judged.image_root, train_config, augment, top_k,
                    accelerator)  # fmt: skip


def held_out_val(manifest: Manifest) -> pd.DataFrame:
    """The val rows cut from the given training labels (``held_out``): judged like training
    samples before tuning trusts them. Empty for a val split of the data's own."""
    val = manifest.split("val")
    if "held_out" not in val:
        return val.iloc[:0]
    return val[val["held_out"].fillna(False).astype(bool).to_numpy()].reset_index(drop=True)


def val_predictions(
    manifest: Manifest,
    run_dir: str | Path,
    train_config: TrainConfig,
    augment: AugmentConfig,
    *,
    top_k: int = 10,
    accelerator: Accelerator,
) -> pd.DataFrame | None:
    """The round's final model on the held-out val rows (which it never trained on), or None
    when val is the data's own."""
    rows = held_out_val(manifest)
    if rows.empty:
        return None
    model, _ = load_network(Path(run_dir) / "model.safetensors")
    return _predict(model, rows, manifest.image_root, train_config, augment, top_k, accelerator)


def _predict(model, rows, image_root, train_config, augment, top_k, accelerator) -> pd.DataFrame:
    """Top-k predictions and embeddings of ``rows`` at the training image size and geometry."""
    channels = model.config.in_chans
    size, view = model_view(model, train_config.image_size, augment)  # as the model was trained
    transform = eval_transform(size, channels, view)
    dataset = ImageDataset(rows, image_root, transform, channels=channels)
    return predict_top_k(model, dataset, accelerator, top_k=top_k, workers=train_config.workers,
                         with_embedding=True)  # fmt: skip


def fold_assignment(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Stratified folds: each class's samples, in a random order, dealt round-robin; the deal
    carries on from class to class so the folds also have equal sizes (within one)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, folds])
    fold = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    # each class's rows in index order, grouped by one stable sort (a mask per class would be
    # N x C work: minutes at 2.5M x 50k)
    by_class = np.argsort(labels, kind="stable")
    for members in np.split(by_class, np.flatnonzero(np.diff(labels[by_class])) + 1):
        members = rng.permutation(members)
        fold[members] = (dealt + np.arange(len(members))) % folds
        dealt += len(members)
    return fold


def merge_out_of_fold(
    fold_predictions: list[pd.DataFrame], fold: np.ndarray, sample_ids: np.ndarray
) -> pd.DataFrame:
    """Join the fold models' predictions: each sample must come from the one model that held it
    out (``fold_predictions[k]`` predicts exactly the samples with ``fold == k``)."""
    position = pd.Index(sample_ids)
    for k, table in enumerate(fold_predictions):
        where = position.get_indexer(table["sample_id"])
        if (where < 0).any() or len(where) != int((fold == k).sum()) or np.any(fold[where] != k):
            raise ValueError(f"fold model {k} must predict exactly the samples of fold {k}")
    merged = pd.concat(fold_predictions, ignore_index=True)
    order = np.argsort(position.get_indexer(merged["sample_id"]), kind="stable")
    return merged.iloc[order].reset_index(drop=True)
