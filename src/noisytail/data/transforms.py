"""Training augmentation (the seed's recipe, in albumentations 2) and the evaluation transform.

Both are built with ``strict=True`` so a misspelt or 1.x-style argument is an error, not a
silently ignored option.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of the seed's augmentations; ``resize_scale`` sets the random-crop margin."""

    resize_scale: float = 1.125  # resize to size * scale, then random-crop `size`
    hue_saturation: float = 0.3
    brightness_contrast: float = 0.3
    gaussian_blur: float = 0.1
    horizontal_flip: float = 0.5
    vertical_flip: float = 0.0
    coarse_dropout: float = 0.2

    @classmethod
    def from_params(cls, params: Mapping | None) -> AugmentConfig:
        params = dict(params or {})
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown augment parameter(s) {sorted(unknown)}")
        return cls(**params)


def _normalize(channels: int) -> list:
    mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,)
    std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,)
    return [A.Normalize(mean=mean, std=std), ToTensorV2()]


def train_transform(size: int, config: AugmentConfig = AugmentConfig(), channels: int = 3):
    """Resize, random crop, colour shifts, blur, flips and coarse dropout, then normalise."""
    resized = max(size, round(size * config.resize_scale))
    colour = [A.HueSaturationValue(p=config.hue_saturation)] if channels == 3 else []
    steps = [
        A.Resize(height=resized, width=resized),
        A.RandomCrop(height=size, width=size),
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
        *_normalize(channels),
    ]
    return A.Compose(steps, strict=True)


def eval_transform(size: int, channels: int = 3):
    """Resize to ``size`` and normalise (test-time enlargement and ten-crop come with TTA)."""
    return A.Compose([A.Resize(height=size, width=size), *_normalize(channels)], strict=True)
