"""SKU-LT-N, the AliProducts-shaped benchmark: its definition, its files, and that it can be
learnt (docs/sku_lt_n.md)."""

import numpy as np
import pytest
from accelerate import Accelerator
from PIL import Image

from noisytail.config.data import AugmentConfig, SkuConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.sku_lt_n import class_counts, import_sku_lt_n
from noisytail.models.network import load_network
from noisytail.prediction import evaluate_split
from noisytail.training.recipes import run_recipe

SMALL = SkuConfig(classes=200, images=3000, head=200, workers=2)


@pytest.fixture(scope="module")
def sku(tmp_path_factory):
    return import_sku_lt_n(tmp_path_factory.mktemp("sku"), SMALL, seed=0)


def test_the_long_tail_has_the_shape_of_aliproducts():
    counts = class_counts(50_030, 2_500_000, 5000)
    assert counts.sum() == 2_500_000 and counts.max() == 5000 and counts.min() == 1
    assert (counts < 20).mean() > 0.5 and (counts <= 3).mean() > 0.15  # most few, many tiny
    assert (counts >= 1000).sum() > 50  # a few classes with thousands
    with pytest.raises(ValueError, match="images must be between"):
        class_counts(100, 50, 10)


def test_noise_goes_to_siblings_and_the_head_never_to_the_truth(sku):
    train = sku.split("train")
    assert len(train) == SMALL.images
    flipped = train[train["label"] != train["true_label"]]
    assert abs(len(flipped) / len(train) - SMALL.eta) < 0.05  # each class's first image kept
    assert train.groupby("true_label")["label"].apply(lambda g: (g == g.name).any()).all()
    family = SMALL.family_size
    siblings = (flipped["label"] // family == flipped["true_label"] // family).mean()
    assert abs(siblings - SMALL.sibling_noise) < 0.06
    # the rest follows class size: the largest tenth of the classes gets most of it
    others = flipped[flipped["label"] // family != flipped["true_label"] // family]
    size = np.bincount(train["true_label"], minlength=SMALL.classes)
    head = np.argsort(-size)[: SMALL.classes // 10]
    assert np.isin(others["label"], head).mean() > size[head].sum() / size.sum() - 0.1


def test_val_and_test_are_clean_and_cover_every_class(sku):
    for split, per_class in (("val", SMALL.val_per_class), ("test", SMALL.test_per_class)):
        rows = sku.split(split)
        assert (rows["label"] == rows["true_label"]).all()
        assert np.bincount(rows["label"], minlength=SMALL.classes).tolist() == [
            per_class] * SMALL.classes  # fmt: skip


def test_files_are_real_images_the_same_whatever_the_workers(sku, tmp_path):
    again = import_sku_lt_n(tmp_path, SkuConfig(**{**SMALL.__dict__, "workers": 1}), seed=0)
    assert again.table.equals(sku.table)
    for path in sku.table["path"].iloc[:: len(sku.table) // 7]:
        image = Image.open(sku.resolve(path))
        assert image.size == (SMALL.image_size,) * 2 and image.mode == "RGB"
        assert (sku.image_root / path).read_bytes() == (again.image_root / path).read_bytes()


def test_a_tiny_model_learns_it_far_above_chance(sku, tmp_path):
    clean = sku.with_table(sku.table.assign(label=sku.table["true_label"]))
    config = TrainConfig(epochs=4, batch_size=64, image_size=SMALL.image_size, workers=0,
                         snapshot_epochs=())  # fmt: skip
    run_recipe(
        RecipeConfig(),
        ModelConfig(backbone="test_resnet", in_chans=3),
        config,
        AugmentConfig(),
        clean,
        tmp_path / "run",
        accelerator=Accelerator(cpu=True),
    )
    model, _ = load_network(tmp_path / "run" / "model.safetensors")
    report = evaluate_split(model, clean, "test", SMALL.image_size, Accelerator(cpu=True),
                            workers=0)  # fmt: skip
    assert report["top1"] > 10 * 100 / SMALL.classes  # chance is 0.5%
