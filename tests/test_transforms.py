import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from noisytail.config.data import AugmentConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    seed_transform,
    train_transform,
)

GREY_MEAN, GREY_STD = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3


def pixels(tensor: torch.Tensor) -> np.ndarray:
    """Undo the normalisation of a one-channel output: H x W uint8 values again."""
    return np.rint((tensor[0].numpy() * GREY_STD + GREY_MEAN) * 255).astype(int)


def same_image_rows(tmp_path, image: np.ndarray, n: int) -> ImageDataset:
    """``n`` rows that all show one image: each row is augmented with its own draw."""
    Image.fromarray(image.astype(np.uint8), "L").save(tmp_path / "one.png")
    rows = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "path": ["one.png"] * n,
                         "label": 0})  # fmt: skip
    return rows


def test_train_and_eval_shapes(toy_manifest):
    train = ImageDataset.from_manifest(toy_manifest, "train", train_transform(32))
    image, label, row = train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert int(label) == 0 and row == 0
    evaluation = ImageDataset.from_manifest(toy_manifest, "val", eval_transform(48), channels=1)
    assert evaluation[0][0].shape == (1, 48, 48)


def test_augmentation_is_reproducible_per_epoch_and_row(toy_manifest):
    dataset = ImageDataset.from_manifest(toy_manifest, "train", train_transform(32), seed=5)
    first = dataset[3][0]
    torch.testing.assert_close(dataset[3][0], first)  # same (seed, epoch, row)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3][0], first)


def test_augmentation_draws_are_independent(tmp_path):
    """Each pixel value names its source position, so every output tells its crop offset and
    its two flips. Over 2,000 rows, two transforms at p = 0.5 must fire together a quarter of
    the time (the old per-transform seeding made them fire together half the time), and the
    crop offset must not follow the flip."""
    size = 16
    image = 1 + np.arange(size * size).reshape(size, size) % 250  # unique values, 0 = border
    config = AugmentConfig(margin=0.125, horizontal_flip=0.5, vertical_flip=0.5)
    rows = same_image_rows(tmp_path, image, 2000)
    dataset = ImageDataset(rows, tmp_path, train_transform(size, config, 1), channels=1, seed=3)
    hflip, vflip, offset = [], [], []
    for i in range(len(dataset)):
        out = pixels(dataset[i][0])
        inside = (out[:, :-1] > 0) & (out[:, 1:] > 0)
        across = np.sign(out[:, 1:] - out[:, :-1])[inside]
        down = np.sign(out[1:, :] - out[:-1, :])[(out[1:] > 0) & (out[:-1] > 0)]
        hflip.append(np.median(across) < 0)
        vflip.append(np.median(down) < 0)
        centre = int(out[8, 8]) - 1  # the source position of the output's centre
        column = centre % size
        offset.append(column - ((size - 1 - 8) if hflip[-1] else 8))
    hflip, vflip, offset = np.array(hflip), np.array(vflip), np.array(offset)
    assert 0.46 < hflip.mean() < 0.54 and 0.46 < vflip.mean() < 0.54
    assert abs((hflip & vflip).mean() - 0.25) < 0.04
    assert len(set(offset)) >= 4  # the crop really moves
    assert abs(np.corrcoef(offset, hflip)[0, 1]) < 0.1


def test_one_shared_generator_gives_different_draws_per_transform():
    import albumentations as A

    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)], strict=True)
    seed_transform(pipeline, 0, 0, 7)
    first, second = pipeline.transforms
    assert first.random_generator is second.random_generator


@pytest.mark.parametrize("crop", ["pad", "zoom"])
def test_train_and_eval_show_objects_at_the_same_scale(tmp_path, crop):
    """A centred square keeps its size relative to the frame from training to evaluation."""
    image = np.zeros((28, 28))
    image[7:21, 7:21] = 255  # 14 px: half the frame
    rows = same_image_rows(tmp_path, image, 50)
    config = AugmentConfig(crop=crop, margin=0.25, horizontal_flip=0)

    def square_side(transform) -> float:
        dataset = ImageDataset(rows, tmp_path, transform, channels=1)
        return float(np.mean([np.sqrt((pixels(dataset[i][0]) > 127).sum())
                              for i in range(len(dataset))]))  # fmt: skip

    trained = square_side(train_transform(32, config, 1))
    evaluated = square_side(eval_transform(32, 1, config))
    assert abs(trained - evaluated) < 1.0, (trained, evaluated)
    if crop == "zoom":  # zoomed in training, a plain resize at test: objects shown smaller
        assert square_side(eval_transform(32, 1, AugmentConfig(crop="pad"))) < trained - 2


def test_each_augmentation_changes_the_image():
    """At probability one every augmentation has an effect (not just p == 1 in its config)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
    plain = AugmentConfig(margin=0, horizontal_flip=0)
    reference = train_transform(20, plain)(image=image)["image"]
    for name in ("hue_saturation", "brightness_contrast", "gaussian_blur", "horizontal_flip",
                 "vertical_flip", "coarse_dropout"):  # fmt: skip
        pipeline = train_transform(20, AugmentConfig(**{"margin": 0, "horizontal_flip": 0,
                                                        name: 1}))  # fmt: skip
        seed_transform(pipeline, 0)
        changed = pipeline(image=image)["image"]
        assert changed.shape == reference.shape
        assert not torch.allclose(changed, reference, atol=1e-3), name


def test_zero_probability_transforms_are_left_out():
    config = AugmentConfig(crop="pad", horizontal_flip=0.5)
    names = [type(t).__name__ for t in train_transform(16, config, 1).transforms]
    assert names == ["Resize", "PadIfNeeded", "RandomCrop", "HorizontalFlip", "Normalize",
                     "ToTensorV2"]  # fmt: skip


def test_unknown_or_bad_augment_parameter_is_named():
    with pytest.raises(ValueError, match="unknown augment parameter.*'flip'"):
        AugmentConfig.from_params({"flip": 0.5})
    with pytest.raises(ValueError, match="augment.crop must be one of"):
        AugmentConfig(crop="random")
    with pytest.raises(ValueError, match=r"augment.gaussian_blur must be in \[0.0, 1.0\], got 1.5"):
        AugmentConfig(gaussian_blur=1.5)
    with pytest.raises(ValueError, match=r"augment.std must be three numbers \(std > 0\)"):
        AugmentConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="augment.mean must be three numbers"):
        AugmentConfig(mean=(0.5,))
    with pytest.raises(ValueError, match="augment.mean must be three numbers"):
        AugmentConfig.from_params({"mean": 0.5, "std": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="augment.mean and augment.std: set both or neither"):
        AugmentConfig(std=(0.5, 0.5, 0.5))
    given = AugmentConfig.from_params({"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert given.mean == (0.5, 0.5, 0.5) and hash(given)  # YAML's lists become tuples


@pytest.mark.parametrize("channels", [1, 3])
def test_a_views_mean_and_std_replace_imagenets(channels):
    """The weights' own statistics (tf_efficientnet: 0.5 / 0.5) map 0..255 onto -1..1."""
    image = np.zeros((8, 8, channels), dtype=np.uint8)
    image[:4] = 255
    half = AugmentConfig(margin=0.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # no resampling
    for transform in (eval_transform(8, channels, half), train_transform(8, half, channels)):
        out = transform(image=image)["image"]
        assert out.shape[0] == channels
        assert set(np.unique(out.numpy().round(4))) == {-1.0, 1.0}
    imagenet = eval_transform(8, channels)(image=image)["image"]
    assert imagenet.min() < -1.5  # ImageNet's mean / std: (0 - 0.45) / 0.226 = -2.0
