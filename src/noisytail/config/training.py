"""``train:`` (and its ``hires:`` / ``crt:`` overlays) and the recipe a run follows, typed."""

from __future__ import annotations

from dataclasses import dataclass

from noisytail.config import check_choice, check_range

SELECTIONS = ("last", "best_val")
# the names of data.samplers.SAMPLERS (kept here so that configs import no torch)
SAMPLERS = ("instance_balanced", "class_balanced", "square_root", "repeated_augmentation")


@dataclass(frozen=True)
class TrainConfig:
    """``train:`` in params.yaml (the hi-res and cRT sections override parts of it)."""

    epochs: int = 15
    batch_size: int = 128  # per process
    optimizer: str = "sgd"  # sgd | adamw
    base_lr: float = 0.1  # learning rate per 256 images: lr = base_lr * global batch / 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step
    milestones: tuple[int, ...] = (14, 20)  # step decay epochs
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    min_lr: float = 0.0  # cosine floor
    label_smoothing: float = 0.0
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off)
    grad_clip: float = 0.0  # max gradient norm (0: off)
    mixed_precision: str = "no"  # no | bf16 | fp16
    sampler: str = "instance_balanced"
    image_size: int = 32
    workers: int = 2
    keep_checkpoints: int = 1
    snapshot_epochs: tuple[int, ...] = (6,)  # also keep model_epoch_<e>.safetensors (early weights)
    select: str = "last"  # last: the final epoch's weights | best_val: the lowest val MCE epoch's
    deterministic: bool = False  # GPUs: deterministic kernels (same seed, same weights; slower)
    cpu: bool = False  # force the CPU even where a GPU is present

    def __post_init__(self) -> None:
        check_choice("train.select", self.select, SELECTIONS)
        check_choice("train.sampler", self.sampler, SAMPLERS)
        check_choice("train.optimizer", self.optimizer, ("sgd", "adamw"))
        check_choice("train.schedule", self.schedule, ("step", "cosine"))
        check_choice("train.mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        for name in ("epochs", "batch_size", "image_size"):
            check_range(f"train.{name}", getattr(self, name), 1)
        for name in ("base_lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup",
                     "cutmix", "grad_clip"):  # fmt: skip
            check_range(f"train.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class RecipeConfig:
    """Which recipe (``training.recipes.RECIPES``) a run follows, and what it starts from."""

    name: str = "full"
    init_from: str = ""  # weights to start from (required by hires, crt, balanced_subset)
    subset_per_class: int = 30  # balanced_subset: the k most confident samples per class
    confidences: str = ""  # balanced_subset: predictions parquet with sample_id, label_prob
    finetune: str = "classifier"  # balanced_subset: classifier | all
