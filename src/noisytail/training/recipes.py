"""The seed's training recipes, each a way of calling the one training loop.

1. ``full``: train everything, instance-balanced (or any) sampling;
2. ``hires``: start from a checkpoint, larger input, few epochs, small learning rate;
3. ``crt``: classifier re-training (Kang et al., 2020): backbone, embedding and BNNeck frozen,
   classifier re-initialised, class-balanced sampling;
4. ``balanced_subset``: fine-tune the classifier (or everything) on the ``k`` most confident
   samples of each class (the seed: 30).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RECIPES, RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest, manifest_digest
from noisytail.data.transforms import eval_transform, train_transform
from noisytail.models.network import NoisyTailNet, build_network
from noisytail.tracking import RunTracker
from noisytail.training.checkpoints import claim_run_dir, run_fingerprint, run_identity
from noisytail.training.engine import fit, seed_everything


def build_recipe_model(
    recipe: RecipeConfig, model_config: ModelConfig, num_classes: int
) -> tuple[NoisyTailNet, list]:
    """The network a recipe starts from, and the modules it keeps frozen."""
    if recipe.name not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe.name!r}")
    if recipe.name != "full" and not recipe.init_from:
        raise ValueError(
            f"recipe {recipe.name!r} needs init_from (a model.safetensors to start from)"
        )
    if recipe.init_from:  # the checkpoint replaces any pretrained weights: don't load them
        model_config = replace(model_config, pretrained="")
    model = build_network(model_config, num_classes)
    if recipe.init_from:
        if not Path(recipe.init_from).is_file():
            raise FileNotFoundError(f"init_from {recipe.init_from} does not exist")
        model.load_state_dict(load_file(recipe.init_from))
    frozen: list = []
    if recipe.name == "crt":
        frozen = model.feature_extractor()
        model.reset_head()
    elif recipe.name == "balanced_subset" and recipe.finetune == "classifier":
        frozen = model.feature_extractor()
    return model, frozen


def training_rows(recipe: RecipeConfig, manifest: Manifest) -> pd.DataFrame:
    rows = manifest.split("train")
    if recipe.name != "balanced_subset":
        return rows
    if not recipe.confidences:
        raise ValueError("recipe 'balanced_subset' needs confidences (a predictions parquet)")
    scores = pd.read_parquet(recipe.confidences, columns=["sample_id", "label_prob"])
    confidence = rows["sample_id"].map(scores.set_index("sample_id")["label_prob"])
    if confidence.isna().any():
        missing = rows.loc[confidence.isna(), "sample_id"].head(5).tolist()
        raise ValueError(f"{recipe.confidences} has no confidence for samples {missing} ...")
    return balanced_subset(rows, confidence.to_numpy(), recipe.subset_per_class)


def run_recipe(
    recipe: RecipeConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    augment: AugmentConfig,
    manifest: Manifest,
    out_dir: str | Path,
    *,
    seed: int = 0,
    tracker: RunTracker | None = None,
    accelerator=None,
    fingerprint: str = "",
) -> dict:
    """Build the recipe's model and data, then train (resuming if ``out_dir`` has checkpoints)."""
    if recipe.name == "crt":
        train_config = replace(train_config, sampler="class_balanced")
    seed_everything(seed, train_config.deterministic)
    model, frozen = build_recipe_model(recipe, model_config, manifest.num_classes)
    channels, size = model_config.in_chans, train_config.image_size
    model.view = {"image_size": size, "crop": augment.crop, "margin": augment.margin}
    rows = training_rows(recipe, manifest)
    train_set = ImageDataset(
        rows, manifest.image_root, train_transform(size, augment, channels), channels, seed
    )
    val_rows = manifest.split("val")
    val_set = None
    if len(val_rows):
        val_set = ImageDataset(
            val_rows, manifest.image_root, eval_transform(size, channels, augment), channels
        )
    return fit(
        model, train_set, val_set, train_config, out_dir, classes=manifest.classes, seed=seed,
        frozen=frozen, tracker=tracker, accelerator=accelerator,
        fingerprint=fingerprint or recipe_fingerprint(recipe, model_config, train_config, augment,
                                                      manifest, seed),
    )  # fmt: skip


def recipe_fingerprint(
    recipe: RecipeConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    augment: AugmentConfig,
    manifest: Manifest,
    seed: int,
) -> str:
    """The identity of a recipe run: what ``run_recipe`` would train (see ``run_fingerprint``)."""
    if recipe.name == "crt":
        train_config = replace(train_config, sampler="class_balanced")
    rows = training_rows(recipe, manifest)
    return run_fingerprint(recipe, model_config, train_config, augment, rows, seed)


def claim_recipe_dir(out_dir: str | Path, fingerprint: str, accelerator) -> None:
    """Before anything is logged: a run folder left by other inputs is emptied (its checkpoints,
    model and MLflow run id), so that a changed run opens a new MLflow run instead of logging
    into the old one. ``fit`` then finds the folder already claimed."""
    if accelerator.is_main_process:
        claim_run_dir(Path(out_dir), run_identity(fingerprint, accelerator.num_processes))
    accelerator.wait_for_everyone()


def run_tracked_recipe(
    recipe: RecipeConfig,
    model_config: ModelConfig,
    train_config: TrainConfig,
    augment: AugmentConfig,
    manifest: Manifest,
    out_dir: str | Path,
    *,
    seed: int,
    tracker: RunTracker,
    accelerator,
    fingerprint: str,
    dataset: tuple[str, str, str] | None = None,
) -> dict:
    """``run_recipe`` logged to ``tracker``: its configs, the training rows as a dataset
    (``dataset`` = source path, name, DVC round), per-epoch and final metrics, the model."""
    tracker.log_params({"recipe": asdict(recipe), "model": asdict(model_config),
                        "train": asdict(train_config), "augment": asdict(augment),
                        "seed": seed, "num_processes": accelerator.num_processes})  # fmt: skip
    if dataset is not None:
        rows = manifest.split("train")
        tracker.log_dataset(rows, dataset[0], dataset[1], manifest_digest(rows), dataset[2])
    try:
        result = run_recipe(
            recipe, model_config, train_config, augment, manifest, out_dir, seed=seed,
            tracker=tracker, accelerator=accelerator, fingerprint=fingerprint,
        )  # fmt: skip
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.log_metrics({f"final_{k}": v for k, v in result["final"].items() if k != "epoch"})
    tracker.log_artifact(Path(out_dir) / "model.safetensors", "model")
    tracker.log_artifact(Path(out_dir) / "model.json", "model")
    return result


def balanced_subset(rows: pd.DataFrame, confidence: np.ndarray, per_class: int) -> pd.DataFrame:
    """The ``per_class`` most confident rows of each class (all of a smaller one), in row order."""
    ranked = rows.assign(_confidence=np.asarray(confidence)).sort_values(
        ["label", "_confidence"], ascending=[True, False], kind="stable"
    )
    chosen = ranked.groupby("label", sort=False).head(per_class).index
    return rows.loc[sorted(chosen)].reset_index(drop=True)
