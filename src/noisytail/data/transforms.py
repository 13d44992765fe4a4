"""Training augmentation (the seed's recipe, in albumentations 2) and the evaluation transform.

Both are built with ``strict=True`` so a misspelt or 1.x-style argument is an error, not a
silently ignored option.

Geometry: training and evaluation must show objects at the same scale, or the model is tested on
sizes it never saw in training. ``crop: pad`` resizes to ``size``, pads a border of
``margin * size`` and random-crops ``size`` (a translation; evaluation just resizes to ``size``).
``crop: zoom`` resizes to ``(1 + margin) * size`` and random-crops ``size``; evaluation then
resizes to the same ``(1 + margin) * size`` and centre-crops, as timm's ``crop_pct`` does.
"""

from __future__ import annotations

import os
import random

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from noisytail.config.data import AugmentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _normalize(channels: int, config: AugmentConfig = AugmentConfig()) -> list:
    """Normalise with ``config.mean`` / ``std`` (ImageNet's when empty); one channel: their mean."""
    mean, std = config.mean or IMAGENET_MEAN, config.std or IMAGENET_STD
    if channels != 3:
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return [A.Normalize(mean=mean, std=std), ToTensorV2()]


def _zoomed(size: int, config: AugmentConfig) -> int:
    return max(size, round(size * (1 + config.margin)))


def _random_crop(size: int, config: AugmentConfig) -> list:
    if config.crop == "zoom":
        resized = _zoomed(size, config)
        return [A.Resize(height=resized, width=resized), A.RandomCrop(height=size, width=size)]
    border = round(size * config.margin)
    return [
        A.Resize(height=size, width=size),
        A.PadIfNeeded(min_height=size + 2 * border, min_width=size + 2 * border,
                      border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=size, width=size),
    ]  # fmt: skip


def train_transform(size: int, config: AugmentConfig = AugmentConfig(), channels: int = 3):
    """Random crop (see the module doc), then each augmentation with its probability."""
    colour = [A.HueSaturationValue(p=config.hue_saturation)] if channels == 3 else []
    steps = [
        *_random_crop(size, config),
        *colour,
        A.RandomBrightnessContrast(p=config.brightness_contrast),
        A.GaussianBlur(blur_limit=(3, 5), p=config.gaussian_blur),
        A.HorizontalFlip(p=config.horizontal_flip),
        A.VerticalFlip(p=config.vertical_flip),
        A.CoarseDropout(
            num_holes_range=(1, 2),
            hole_height_range=(0.1, 0.25),
            hole_width_range=(0.1, 0.25),
            fill=0,
            p=config.coarse_dropout,
        ),  # fmt: skip
        *_normalize(channels, config),
    ]
    # Transforms whose probability is 0 never fire: leave them out (they still cost a call).
    steps = [t for t in steps if getattr(t, "p", 1) > 0]
    return A.Compose(steps, strict=True)


def eval_transform(size: int, channels: int = 3, config: AugmentConfig = AugmentConfig()):
    """The deterministic view of the training geometry: same object scale as in training."""
    if config.crop == "zoom":
        resized = _zoomed(size, config)
        steps = [A.Resize(height=resized, width=resized), A.CenterCrop(height=size, width=size)]
    else:
        steps = [A.Resize(height=size, width=size)]
    return A.Compose([*steps, *_normalize(channels, config)], strict=True)


def seed_transform(transform: A.Compose, *seed: int) -> None:
    """Give the whole pipeline ONE generator for this item, seeded from ``seed``.

    ``Compose.set_random_seed(s)`` would give every transform its own generator seeded with the
    same ``s``: every transform's first draw is then the same number, so the augmentations fire
    together and the crop offset follows the flip. A single shared generator makes the draws of
    successive transforms independent.
    """
    entropy = np.random.SeedSequence(list(seed))
    transform.set_random_state(
        np.random.default_rng(entropy), random.Random(int(entropy.generate_state(1)[0]))
    )
