"""The training engine and the four recipes, on timm's tiny test models and toy data."""

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.training.engine import learning_rate, selected_epoch
from noisytail.training.recipes import run_recipe, training_rows

MODEL = ModelConfig(backbone="test_resnet", embedding_dim=32, bnneck=True, in_chans=3)
TRAIN = TrainConfig(epochs=4, batch_size=16, base_lr=0.4, warmup_epochs=0, schedule="cosine",
                    workers=0, image_size=32)  # fmt: skip
NO_AUGMENT = AugmentConfig(hue_saturation=0, brightness_contrast=0, gaussian_blur=0,
                           horizontal_flip=0, coarse_dropout=0)  # fmt: skip


def train(manifest, out, recipe=RecipeConfig(), config=TRAIN, **kwargs):
    return run_recipe(recipe, MODEL, config, NO_AUGMENT, manifest, out, **kwargs)


def losses(result):
    return [h["train_loss"] for h in result["history"]]


def test_learning_rate_schedule():
    step = TrainConfig(epochs=24, warmup_epochs=2, schedule="step", milestones=(14, 20), gamma=0.1)
    assert learning_rate(0, 10, 1.0, step) == pytest.approx(0.05)
    assert learning_rate(19, 10, 1.0, step) == pytest.approx(1.0)
    assert learning_rate(139, 10, 1.0, step) == pytest.approx(1.0)
    assert learning_rate(140, 10, 1.0, step) == pytest.approx(0.1)
    assert learning_rate(200, 10, 1.0, step) == pytest.approx(0.01)
    cosine = TrainConfig(epochs=12, warmup_epochs=2, schedule="cosine", min_lr=0.1)
    assert learning_rate(20, 10, 1.0, cosine) == pytest.approx(1.0)
    assert learning_rate(70, 10, 1.0, cosine) == pytest.approx(0.55)
    assert learning_rate(119, 10, 1.0, cosine) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9.9 / 10))
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import tiny_manifest

    root = tmp_path_factory.mktemp("recipes")
    manifest = tiny_manifest(root / "toy")
    return manifest, train(manifest, root / "full"), root


def test_full_training_loss_falls_and_learns(trained):
    _, result, root = trained
    assert losses(result)[-1] < 0.7 * losses(result)[0]
    assert result["final"]["val_top1"] >= 90
    assert (root / "full" / "model.safetensors").is_file()


def test_hires_finetune_runs_at_larger_input(trained):
    manifest, _, root = trained
    config = TrainConfig(**{**TRAIN.__dict__, "image_size": 48, "base_lr": 0.05, "epochs": 3})
    recipe = RecipeConfig("hires", init_from=str(root / "full" / "model.safetensors"))
    result = train(manifest, root / "hires", recipe, config)
    assert losses(result)[-1] < losses(result)[0]
    assert result["final"]["val_top1"] >= 90


def test_crt_freezes_the_backbone_and_retrains_the_classifier(trained):
    manifest, _, root = trained
    init = root / "full" / "model.safetensors"
    result = train(manifest, root / "crt", RecipeConfig("crt", init_from=str(init)))
    before, after = load_file(init), load_file(root / "crt" / "model.safetensors")
    frozen = [k for k in before if not k.startswith("head.")]
    assert any(k.startswith("backbone.") and "running_mean" in k for k in frozen)
    for key in frozen:  # weights and BN statistics, bit for bit
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert result["config"]["sampler"] == "class_balanced"
    assert losses(result)[-1] < losses(result)[0]


def test_balanced_subset_uses_the_most_confident_per_class(trained, tmp_path):
    manifest, _, root = trained
    rows = manifest.split("train")
    confidences = tmp_path / "predictions.parquet"
    pd.DataFrame({"sample_id": rows["sample_id"], "label_prob": range(len(rows))}).to_parquet(
        confidences
    )
    init = str(root / "full" / "model.safetensors")
    recipe = RecipeConfig("balanced_subset", init, 8, str(confidences), finetune="all")

    subset = training_rows(recipe, manifest)
    assert subset.groupby("label").size().tolist() == [8, 8, 6]  # class 2 has only 6
    assert subset["sample_id"].tolist()[:8] == rows["sample_id"].tolist()[22:30]  # the top 8
    config = TrainConfig(**{**TRAIN.__dict__, "batch_size": 8, "base_lr": 0.05})
    result = train(manifest, root / "subset", recipe, config)
    assert losses(result)[-1] < losses(result)[0]


def test_a_finished_run_is_not_repeated_but_changed_inputs_restart(trained):
    manifest, result, root = trained
    model_file = root / "full" / "model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    assert train(manifest, root / "full")["history"] == result["history"]
    assert model_file.stat().st_mtime_ns == stamp
    changed = TrainConfig(**{**TRAIN.__dict__, "epochs": 1})
    assert len(train(manifest, root / "full", config=changed)["history"]) == 1


def test_recipe_without_init_is_a_clear_error(toy_manifest, tmp_path):
    with pytest.raises(ValueError, match="recipe 'crt' needs init_from"):
        train(toy_manifest, tmp_path, RecipeConfig("crt"))


def test_fingerprint_covers_configs_data_and_code(trained, monkeypatch):
    from noisytail.training import checkpoints

    manifest, _, _ = trained
    rows = manifest.split("train")
    base = checkpoints.run_fingerprint(RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, rows, 0)
    assert base == checkpoints.run_fingerprint(RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, rows, 0)
    assert base != checkpoints.run_fingerprint(RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, rows, 1)
    assert base != checkpoints.run_fingerprint(
        RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, rows[1:], 0
    )
    from noisytail.training.recipes import recipe_fingerprint

    # how fast a run goes and what it keeps on disk do not change its weights
    plain = recipe_fingerprint(RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, manifest, 0)
    faster = TrainConfig(**{**TRAIN.__dict__, "workers": 3, "keep_checkpoints": 4})
    assert recipe_fingerprint(RecipeConfig(), MODEL, faster, NO_AUGMENT, manifest, 0) == plain
    longer = TrainConfig(**{**TRAIN.__dict__, "epochs": TRAIN.epochs + 1})
    assert recipe_fingerprint(RecipeConfig(), MODEL, longer, NO_AUGMENT, manifest, 0) != plain
    monkeypatch.setattr(checkpoints, "code_digest", lambda: "other code")
    assert base != checkpoints.run_fingerprint(RecipeConfig(), MODEL, TRAIN, NO_AUGMENT, rows, 0)


def test_out_of_fold_models_never_train_on_what_they_judge(tmp_path, monkeypatch):
    """Cross-fitting with judge=all: fold k trains on the round's samples outside fold k and
    predicts every judged sample of fold k, including samples the round had dropped."""
    from conftest import tiny_manifest

    from noisytail.cleaning import predictions as cleaning_predictions_module
    from noisytail.cleaning.predictions import fold_assignment

    original = tiny_manifest(tmp_path / "toy", per_class=(12, 8, 6))
    train_rows = original.split("train")
    dropped = train_rows["sample_id"].iloc[::5].tolist()  # an earlier round dropped these
    round_input = original.with_table(original.table[~original.table["sample_id"].isin(dropped)])
    seen = []

    def recording_recipe(recipe, model, config, augment, manifest, out, **kwargs):
        seen.append(set(manifest.split("train")["sample_id"]))
        return run_recipe(recipe, model, config, augment, manifest, out, **kwargs)

    monkeypatch.setattr(cleaning_predictions_module, "run_recipe", recording_recipe)
    from accelerate import Accelerator

    table = cleaning_predictions_module.out_of_fold_predictions(
        round_input, original, 2, MODEL, TrainConfig(epochs=1, batch_size=8, workers=0,
        image_size=32), NO_AUGMENT, tmp_path / "folds", accelerator=Accelerator(cpu=True),
    )  # fmt: skip
    fold = fold_assignment(train_rows["label"].to_numpy(), 2, 0)
    assert table["sample_id"].tolist() == train_rows["sample_id"].tolist()
    assert table["fold"].tolist() == fold.tolist()
    assert len(table["embedding"].iloc[0]) == MODEL.embedding_dim
    for k in range(2):
        judged_here = set(train_rows["sample_id"][fold == k])
        assert seen[k] == set(round_input.split("train")["sample_id"]) - judged_here
        assert not seen[k] & set(dropped)


def test_learns_shapes_that_only_spatial_structure_tells_apart(tmp_path):
    """The default geometry and augmentation on a task a model must see to solve (chance: 75%
    mean class error): bars, rings and crosses at random positions."""
    from accelerate import Accelerator
    from conftest import shapes_manifest

    from noisytail.models.network import load_network
    from noisytail.prediction import evaluate_split

    manifest = shapes_manifest(tmp_path / "shapes")
    model = ModelConfig(backbone="test_resnet", embedding_dim=0, bnneck=False, in_chans=1)
    config = replace(TRAIN, epochs=8, base_lr=0.2, warmup_epochs=1)
    run_recipe(RecipeConfig(), model, config, AugmentConfig(), manifest, tmp_path / "run")
    network, _ = load_network(tmp_path / "run" / "model.safetensors")
    report = evaluate_split(network, manifest, "test", 32, Accelerator(cpu=True))
    assert report["mean_class_error"] < 15, report


def test_selected_epoch_is_the_lowest_validation_error_the_later_on_a_tie():
    history = [{"epoch": e, "val_mean_class_error": v} for e, v in
               enumerate([50.0, 20.0, 30.0, 20.0, 40.0], start=1)]  # fmt: skip
    assert selected_epoch(history) == 4
    with pytest.raises(ValueError, match="train.select must be one of"):
        TrainConfig(select="best")


def test_best_val_selection_writes_the_chosen_epochs_weights(tmp_path):
    from conftest import tiny_manifest

    manifest = tiny_manifest(tmp_path / "toy")
    result = train(manifest, tmp_path / "run", config=replace(TRAIN, select="best_val"))
    errors = [h["val_mean_class_error"] for h in result["history"]]
    assert errors[result["selected_epoch"] - 1] == min(errors)
    chosen, best = (load_file(tmp_path / "run" / f"{name}.safetensors")
                    for name in ("model", "model_best"))  # fmt: skip
    assert all(torch.equal(chosen[k], best[k]) for k in chosen)


def test_the_weights_input_statistics_are_used_in_training_and_saved_with_the_view(tmp_path):
    """``model.normalization: backbone`` (``auto`` with pretrained weights) normalises with the
    backbone's own mean / std (timm's test_resnet: 0.5), trains on it and saves it, so that
    prediction and serving see the same inputs."""
    from conftest import tiny_manifest

    from noisytail.models.network import load_network
    from noisytail.prediction import model_view

    manifest = tiny_manifest(tmp_path / "toy")
    model = replace(MODEL, normalization="backbone")
    config = replace(TRAIN, epochs=1)
    run_recipe(RecipeConfig(), model, config, NO_AUGMENT, manifest, tmp_path / "run")
    saved, _ = load_network(tmp_path / "run" / "model.safetensors")
    assert saved.view["mean"] == [0.5, 0.5, 0.5] and saved.view["std"] == [0.5, 0.5, 0.5]
    _, view = model_view(saved)
    assert view.mean == (0.5, 0.5, 0.5) and view.std == (0.5, 0.5, 0.5)
    # a fine-tune keeps the inputs its starting model saw, whatever the config now says
    start = RecipeConfig("hires", init_from=str(tmp_path / "run" / "model.safetensors"))
    run_recipe(start, MODEL, config, NO_AUGMENT, manifest, tmp_path / "hires")
    assert load_network(tmp_path / "hires" / "model.safetensors")[0].view["mean"] == [0.5] * 3
    plain = run_recipe(RecipeConfig(), MODEL, config, NO_AUGMENT, manifest, tmp_path / "plain")
    assert plain["final"]
    assert load_network(tmp_path / "plain" / "model.safetensors")[0].view["mean"] == []
