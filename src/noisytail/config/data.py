"""``data:``, ``benchmark:`` and ``augment:`` in params.yaml, typed and range-checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from noisytail.config import ConfigError, check_choice, check_range

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


SOURCES = ("fmnist_lt_n", "sku_lt_n", "image_folder", "table")


@dataclass(frozen=True)
class DataConfig:
    """``data:`` in params.yaml."""

    source: str = (
        "fmnist_lt_n"  # fmnist_lt_n | sku_lt_n (synthetic benchmarks) | image_folder | table
    )
    path: str = ""  # image folder or CSV/parquet table for the user sources
    root: str = ""  # folder that relative paths in a table are resolved against
    val_fraction: float = 0.1  # user data without a val split: hold out this share per class,
    val_per_class: int = 100  # at least one, at most this many,
    val_min_class: int = 3  # and nothing from a class with fewer images
    on_bad_image: str = "error"  # error | skip
    check_workers: int = 8
    fashion_mnist_dir: str = str(FASHION_MNIST_DIR)

    def __post_init__(self) -> None:
        check_choice("data.source", self.source, SOURCES)
        check_choice("data.on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES)
        check_range("data.val_fraction", self.val_fraction, 0.0, 0.5)
        check_range("data.val_per_class", self.val_per_class, 0)
        # a class of fewer than 2 would give its only image to val and have none to train on
        check_range("data.val_min_class", self.val_min_class, 2)
        if self.source not in ("fmnist_lt_n", "sku_lt_n") and not self.path:
            raise ConfigError(
                f"data.path: the {self.source!r} source needs the path of your "
                f"{'image folder' if self.source == 'image_folder' else 'table'}"
            )


@dataclass(frozen=True)
class SkuConfig:
    """``benchmark.sku_lt_n:``: SKU-LT-N, the AliProducts-shaped benchmark (docs/sku_lt_n.md)."""

    classes: int = 50_030
    images: int = 500_000  # training images (val and test come on top)
    head: int = 5000  # the most training images a class has
    spread: float = 1.6  # sigma of the log-normal sizes: the longer the tail, the larger
    family_size: int = 5  # look-alike sibling SKUs per family (differ in 2 of 9 patches)
    image_size: int = 24
    eta: float = 0.3  # label noise rate
    sibling_noise: float = 0.5  # share of the flips that go to a sibling (the rest: by size)
    val_per_class: int = 1  # clean, every class
    test_per_class: int = 2  # clean, every class
    workers: int = 0  # processes writing the images (0: one per core)

    def __post_init__(self) -> None:
        for name in ("classes", "images", "head", "family_size", "image_size"):
            check_range(f"benchmark.sku_lt_n.{name}", getattr(self, name), 1)
        check_range("benchmark.sku_lt_n.family_size", self.family_size, 1, 36)
        check_range("benchmark.sku_lt_n.eta", self.eta, 0.0, 0.99)
        check_range("benchmark.sku_lt_n.sibling_noise", self.sibling_noise, 0.0, 1.0)
        check_range("benchmark.sku_lt_n.spread", self.spread, 0.0)
        for name in ("val_per_class", "test_per_class", "workers"):
            check_range(f"benchmark.sku_lt_n.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class BenchmarkConfig:
    """``benchmark:`` in params.yaml: FMNIST-LT-N (docs/benchmark.md) and SKU-LT-N."""

    n_max: int = 5000
    rho: float = 100.0
    noise_type: str = "imb"
    eta: float = 0.4
    val_per_class: int = 100
    test_per_class: int = 0  # 0: the official test (1,000 a class); k: the first k of each
    sku_lt_n: SkuConfig = SkuConfig()

    def __post_init__(self) -> None:
        check_choice("benchmark.noise_type", self.noise_type, ("imb", "sym"))
        check_range("benchmark.eta", self.eta, 0.0, 0.99)
        check_range("benchmark.rho", self.rho, 1.0)
        check_range("benchmark.test_per_class", self.test_per_class, 0, 1000)


CROPS = ("pad", "zoom")


@dataclass(frozen=True)
class AugmentConfig:
    """``augment:`` in params.yaml: the crop geometry and the probability of each augmentation."""

    crop: str = "zoom"  # zoom: resize up, random-crop | pad: translate within a zero border
    margin: float = 0.125  # pad: border of margin * size per side | zoom: resize to (1+margin)
    hue_saturation: float = 0.0  # colour images only (skipped for one channel)
    brightness_contrast: float = 0.0
    gaussian_blur: float = 0.0
    horizontal_flip: float = 0.0
    vertical_flip: float = 0.0
    coarse_dropout: float = 0.0
    # The input normalisation (RGB), resolved from `model.normalization` when training starts
    # and saved with the model's view; () is ImageNet's. Left out of params.yaml (set it there
    # only to override the weights' own).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_choice("augment.crop", self.crop, CROPS)
        for f in fields(self):
            if f.name not in ("crop", "mean", "std"):  # the margin and the probabilities
                check_range(f"augment.{f.name}", getattr(self, f.name), 0.0, 1.0)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                not isinstance(values, (list, tuple))
                or len(values) not in (0, 3)
                or (name == "std" and min(values, default=1) <= 0)
            ):
                raise ConfigError(f"augment.{name} must be three numbers (std > 0), got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))  # YAML gives lists
        if bool(self.mean) != bool(self.std):
            raise ConfigError("augment.mean and augment.std: set both or neither")

    @classmethod
    def from_params(cls, params: Mapping | None) -> AugmentConfig:
        params = dict(params or {})
        unknown = set(params) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(
                f"unknown augment parameter(s) {sorted(unknown)}; known: "
                f"{sorted(f.name for f in fields(cls))}"
            )
        return cls(**params)


BAD_IMAGE_POLICIES = ("error", "skip")
