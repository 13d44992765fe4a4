import numpy as np
import pytest
import torch

from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import AugmentConfig, eval_transform, train_transform


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


def test_every_augmentation_fires_at_probability_one():
    config = AugmentConfig(hue_saturation=1, brightness_contrast=1, gaussian_blur=1,
                           horizontal_flip=1, vertical_flip=1, coarse_dropout=1)  # fmt: skip
    pipeline = train_transform(16, config)
    pipeline.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (20, 20, 3), dtype=np.uint8)
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names[:8] == [
        "Resize", "RandomCrop", "HueSaturationValue", "RandomBrightnessContrast",
        "GaussianBlur", "HorizontalFlip", "VerticalFlip", "CoarseDropout",
    ]  # fmt: skip
    assert all(t.p == 1 for t in pipeline.transforms[2:8])
    assert pipeline(image=image)["image"].shape == (3, 16, 16)


def test_unknown_augment_parameter_is_named():
    with pytest.raises(ValueError, match="unknown augment parameter.*'flip'"):
        AugmentConfig.from_params({"flip": 0.5})
