"""The seed's training recipes: a registry of the ways of calling the one training loop.

    full             train everything, with ``train.sampler`` (instance-balanced by default)
    hires            from a checkpoint: larger input, few epochs, small learning rate
    crt              classifier re-training (Kang et al., 2020): backbone, embedding and BNNeck
                     frozen, classifier re-initialised, class-balanced sampling
    balanced_subset  fine-tune the classifier (or everything) on the ``k`` most confident
                     samples of each class (the seed: 30)

A recipe says what it starts from, which samples it trains on, what it freezes and which
sampler it imposes; ``run_recipe`` does the rest the same way for all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors.torch import load_file

from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest, manifest_digest
from noisytail.data.transforms import eval_transform, train_transform
from noisytail.models.network import (
    NoisyTailNet,
    build_network,
    input_normalisation,
    saved_view,
)
from noisytail.tracking import RunTracker
from noisytail.training.checkpoints import (
    claim_run_dir,
    file_digest,
    run_fingerprint,
    run_identity,
    weight_settings,
)
from noisytail.training.engine import fit, seed_everything


def all_training_rows(config: RecipeConfig, manifest: Manifest) -> pd.DataFrame:
    return manifest.split("train")


def most_confident_rows(config: RecipeConfig, manifest: Manifest) -> pd.DataFrame:
    """The ``subset_per_class`` training rows of each class its ``confidences`` rank highest."""
    rows = manifest.split("train")
    if not config.confidences:
        raise ValueError("recipe 'balanced_subset' needs confidences (a predictions parquet)")
    scores = pd.read_parquet(config.confidences, columns=["sample_id", "label_prob"])
    confidence = rows["sample_id"].map(scores.set_index("sample_id")["label_prob"])
    if confidence.isna().any():
        missing = rows.loc[confidence.isna(), "sample_id"].head(5).tolist()
        raise ValueError(f"{config.confidences} has no confidence for samples {missing} ...")
    return balanced_subset(rows, confidence.to_numpy(), config.subset_per_class)


def balanced_subset(rows: pd.DataFrame, confidence: np.ndarray, per_class: int) -> pd.DataFrame:
    """The ``per_class`` most confident rows of each class (all of a smaller one), in row order."""
    ranked = rows.assign(_confidence=np.asarray(confidence)).sort_values(
        ["label", "_confidence"], ascending=[True, False], kind="stable"
    )
    chosen = ranked.groupby("label", sort=False).head(per_class).index
    return rows.loc[sorted(chosen)].reset_index(drop=True)


@dataclass(frozen=True)
class Recipe:
    """How one recipe calls the training loop."""

    name: str
    needs_init: bool = False  # starts from another run's weights (init_from)
    sampler: str | None = None  # a sampler it imposes on train.sampler
    reset_head: bool = False  # re-initialise the classifier
    freezes: Callable[[RecipeConfig], bool] = lambda config: False  # the feature extractor
    rows: Callable[[RecipeConfig, Manifest], pd.DataFrame] = all_training_rows

    def train_config(self, config: TrainConfig) -> TrainConfig:
        return replace(config, sampler=self.sampler) if self.sampler else config


RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


register(Recipe("full"))
register(Recipe("hires", needs_init=True))
register(Recipe("crt", needs_init=True, sampler="class_balanced", reset_head=True,
                freezes=lambda config: True))  # fmt: skip
register(Recipe("balanced_subset", needs_init=True, rows=most_confident_rows,
                freezes=lambda config: config.finetune == "classifier"))  # fmt: skip


def recipe_for(config: RecipeConfig) -> Recipe:
    """The registered recipe ``config`` names; a clear error for an unknown or incomplete one."""
    if config.name not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {config.name!r}")
    recipe = RECIPES[config.name]
    if recipe.needs_init and not config.init_from:
        raise ValueError(
            f"recipe {config.name!r} needs init_from (a model.safetensors to start from)"
        )
    return recipe


def build_recipe_model(
    config: RecipeConfig, model_config: ModelConfig, num_classes: int
) -> tuple[NoisyTailNet, list]:
    """The network a recipe starts from, and the modules it keeps frozen."""
    recipe = recipe_for(config)
    if config.init_from:  # the checkpoint replaces any pretrained weights: don't load them
        model_config = replace(model_config, pretrained="")
    model = build_network(model_config, num_classes)
    if config.init_from:
        if not Path(config.init_from).is_file():
            raise FileNotFoundError(f"init_from {config.init_from} does not exist")
        model.load_state_dict(load_file(config.init_from))
    frozen = model.feature_extractor() if recipe.freezes(config) else []
    if recipe.reset_head:
        model.reset_head()
    return model, frozen


def training_rows(config: RecipeConfig, manifest: Manifest) -> pd.DataFrame:
    return recipe_for(config).rows(config, manifest)


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
    train_config = recipe_for(recipe).train_config(train_config)
    seed_everything(seed, train_config.deterministic)
    model, frozen = build_recipe_model(recipe, model_config, manifest.num_classes)
    channels, size = model_config.in_chans, train_config.image_size
    augment = resolved_normalisation(augment, model_config, recipe)
    model.view = {"image_size": size, "crop": augment.crop, "margin": augment.margin,
                  "mean": list(augment.mean), "std": list(augment.std)}  # fmt: skip
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
    """The identity of a recipe run: what ``run_recipe`` would train (see ``run_fingerprint``).

    The weights a fine-tune starts from count by their content: a retrained full step changes
    them but not their path, and its hi-res and balance steps must then retrain too. The
    confidences of ``balanced_subset`` count through the rows they select."""
    train_config = recipe_for(recipe).train_config(train_config)
    rows = training_rows(recipe, manifest)
    starts_from = file_digest(recipe.init_from) if recipe.init_from else ""
    identity = {**asdict(recipe), "init_from": starts_from, "confidences": ""}
    return run_fingerprint(identity, model_config, weight_settings(train_config), augment, rows,
                           seed)  # fmt: skip


def resolved_normalisation(
    augment: AugmentConfig, model_config: ModelConfig, recipe: RecipeConfig
) -> AugmentConfig:
    """``augment`` with the input mean / std the model trains on: given ones; else the model it
    starts from was trained on (a fine-tune keeps its inputs); else ``model.normalization``'s."""
    if augment.mean:
        return augment
    if recipe.init_from:
        view = saved_view(recipe.init_from)
        if view.get("mean"):
            return replace(augment, mean=view["mean"], std=view["std"])
    mean, std = input_normalisation(model_config)
    return replace(augment, mean=mean, std=std)


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
    augment = resolved_normalisation(augment, model_config, recipe)  # the mean / std it uses
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
