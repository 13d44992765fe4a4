"""The network: a timm backbone, an optional embedding layer, a BNNeck and a classifier head.

Weights never come from the network at run time: ``HF_HUB_OFFLINE`` defaults to 1 here, and
pretrained weights come from a local file or an already-populated Hugging Face cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402

from noisytail.config.model import VIT_PREFIXES, ModelConfig  # noqa: E402
from noisytail.errors import NoisytailError  # noqa: E402
from noisytail.models.heads import build_head  # noqa: E402


class PretrainedWeightsError(NoisytailError, FileNotFoundError):
    """Pretrained weights that are missing or do not fit the backbone."""


def _load_ordered(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors onto the model's parameters and buffers in order (names may differ)."""
    skip = "num_batches_tracked"
    target = [k for k in model.state_dict() if not k.endswith(skip)]
    values = [v for k, v in state.items() if not k.endswith(skip)]
    if len(values) < len(target):
        raise PretrainedWeightsError(
            f"{source}: {len(values)} tensors for a backbone with {len(target)}"
        )
    mapped = {}
    for name, value in zip(target, values):
        expected = model.state_dict()[name].shape
        if value.shape != expected:
            raise PretrainedWeightsError(
                f"{source}: tensor for {name} has shape {tuple(value.shape)}, "
                f"expected {tuple(expected)}"
            )
        mapped[name] = value
    model.load_state_dict(mapped, strict=False)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state))


def input_normalisation(config: ModelConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std images are normalised with for this model; ``((), ())`` for ImageNet's
    (the transforms' default). ``backbone`` (and ``auto`` with pretrained weights) reads timm's
    pretrained config of the backbone: what its weights were trained on."""
    pretrained = config.pretrained not in ("", "none")
    if config.normalization == "imagenet" or (config.normalization == "auto" and not pretrained):
        return (), ()
    cfg = timm.get_pretrained_cfg(config.resolved().backbone)
    if cfg is None:
        return (), ()
    return tuple(cfg.mean), tuple(cfg.std)


def create_backbone(config: ModelConfig, num_classes: int = 0) -> nn.Module:
    """A timm model; ``num_classes=0`` gives pooled features (``model.num_features`` wide)."""
    config = config.resolved()
    kwargs: dict = {"num_classes": num_classes, "in_chans": config.in_chans,
                    "drop_rate": config.drop_rate}  # fmt: skip
    if config.backbone.startswith(VIT_PREFIXES):
        # built for image_size, but any input size works (hi-res fine-tuning, FixRes testing):
        # the position embedding is resampled to the input's grid
        kwargs["img_size"] = config.image_size
        kwargs["dynamic_img_size"] = True
        if config.patch_size:
            kwargs["patch_size"] = config.patch_size
    if config.pretrained in ("", "none"):
        return timm.create_model(config.backbone, pretrained=False, **kwargs)
    if config.pretrained == "hf":
        try:
            return timm.create_model(config.backbone, pretrained=True, **kwargs)
        except Exception as error:  # huggingface_hub raises several types when offline
            raise PretrainedWeightsError(
                f"no pretrained weights for {config.backbone} in the offline Hugging Face cache "
                f"({error.__class__.__name__}); set model.pretrained to a local weights file"
            ) from error
    if config.key_map == "timm":
        read_state_dict(config.pretrained)  # a clear error for a missing file, before timm
        return timm.create_model(
            config.backbone, pretrained=True,
            pretrained_cfg_overlay={"file": str(config.pretrained)}, **kwargs,
        )  # fmt: skip
    if config.key_map == "ordered":
        model = timm.create_model(config.backbone, pretrained=False, **kwargs)
        _load_ordered(model, read_state_dict(config.pretrained), config.pretrained)
        return model
    raise ValueError(f"model.key_map must be 'timm' or 'ordered', got {config.key_map!r}")


class NoisyTailNet(nn.Module):
    """backbone -> [embedding (Linear to 512)] -> [BNNeck] -> classifier."""

    def __init__(self, config: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.config, self.num_classes = config, num_classes
        # How the network saw its images in training (image_size, crop, margin): saved with the
        # weights so that evaluation and prediction use the same view (see data.transforms).
        self.view: dict | None = None
        self.backbone = create_backbone(config)
        if config.channels_last:  # activations follow the weights' memory format
            self.backbone.to(memory_format=torch.channels_last)
        width = self.backbone.num_features
        if config.embedding_dim:
            self.embedding: nn.Module = nn.Linear(width, config.embedding_dim)
            width = config.embedding_dim
        else:
            self.embedding = nn.Identity()
        if config.bnneck:
            # BNNeck (Luo et al., 2019): BN on the features before the classifier, no shift.
            self.neck: nn.Module = nn.BatchNorm1d(width)
            self.neck.bias.requires_grad_(False)
        else:
            self.neck = nn.Identity()
        self.head = build_head(config.head, width, num_classes, config.lws)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised embedding the classifier sees."""
        return self.neck(self.embedding(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_extractor(self) -> list[nn.Module]:
        """Everything below the classifier (frozen by classifier re-training)."""
        return [self.backbone, self.embedding, self.neck]

    def reset_head(self) -> None:
        config = self.config
        self.head = build_head(config.head, self.head_in_features, self.num_classes, config.lws)

    @property
    def head_in_features(self) -> int:
        return self.config.embedding_dim or self.backbone.num_features


def build_network(config: ModelConfig, num_classes: int) -> NoisyTailNet:
    return NoisyTailNet(config, num_classes)


def save_network(model: NoisyTailNet, path: str | os.PathLike, classes: tuple[str, ...]) -> Path:
    """``model.safetensors`` plus ``model.json`` (config and classes) to rebuild it.

    Each file is written under a temporary name and renamed: a reader (or a killed run) never
    meets a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"model": asdict(replace(model.config, pretrained="")), "classes": list(classes),
            "view": model.view}  # fmt: skip
    partial = path.with_name(f"partial_{path.stem}")
    partial.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    partial.with_suffix(".json").replace(path.with_suffix(".json"))
    save_file(state, str(partial.with_suffix(".safetensors")))
    partial.with_suffix(".safetensors").replace(path)
    return path


def saved_view(path: str | os.PathLike) -> dict:
    """The view a saved model was trained with (image size, crop, input mean / std), from its
    ``model.json``; empty for weights saved without one (older versions, a bare state dict)."""
    meta = Path(path).with_suffix(".json")
    return (json.loads(meta.read_text()).get("view") or {}) if meta.is_file() else {}


def load_network(path: str | os.PathLike) -> tuple[NoisyTailNet, tuple[str, ...]]:
    """Rebuild a saved network (no pretrained download: the saved weights replace them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} do not exist")
    meta = json.loads(path.with_suffix(".json").read_text())
    model = build_network(ModelConfig(**meta["model"]), len(meta["classes"]))
    model.load_state_dict(load_file(str(path)))
    model.view = meta.get("view")  # (saved_view: the same, for a path alone)
    return model, tuple(meta["classes"])
