"""``model:`` in params.yaml, and the presets: the seed's backbones and CPU-sized siblings."""

from __future__ import annotations

from dataclasses import dataclass, replace

from noisytail.config import check_choice

# The seed's three backbones, and CPU-sized siblings that train the default benchmark.
PRESETS: dict[str, dict] = {
    "resnest101": {"backbone": "resnest101e"},
    "deit_small": {"backbone": "deit_small_patch16_224"},
    "efficientnetv2_m": {"backbone": "tf_efficientnetv2_m"},
    "resnest14": {"backbone": "resnest14d"},
    "deit_tiny": {"backbone": "deit_tiny_patch16_224", "patch_size": 4},
    "efficientnetv2_b0": {"backbone": "tf_efficientnetv2_b0"},
    "resnet18": {"backbone": "resnet18"},
}


VIT_PREFIXES = ("vit_", "deit", "test_vit", "eva", "beit")
NORMALIZATIONS = ("auto", "imagenet", "backbone")


@dataclass(frozen=True)
class ModelConfig:
    """``model:`` in params.yaml."""

    backbone: str = "resnet18"  # a preset name (PRESETS) or any timm model name
    pretrained: str = ""  # "" (none) | a .pth/.safetensors file | "hf" (offline HF cache)
    key_map: str = "timm"  # timm: the file uses timm's key names | ordered: map keys in order
    embedding_dim: int = 0  # 512: the seed's embedding layer (0: none)
    bnneck: bool = False  # True: the seed's BN on the features before the classifier
    head: str = "linear"  # linear | cosine
    lws: bool = False
    drop_rate: float = 0.0
    in_chans: int = 1  # FMNIST-LT-N is grey; 3 for colour photos
    image_size: int = 32  # ViTs are built for this input size
    patch_size: int = 0  # ViTs: 0 keeps the backbone's own
    # Backbone weights in NHWC: convolutions on CPU run faster on it (a tf_efficientnet_lite0
    # step at 64 px 1.87x, resnet18's at 32 px 1.09x: benchmarks/results/channels_last.json);
    # numerics differ only in rounding.
    channels_last: bool = False
    # auto: the pretrained weights' own input mean / std (timm's pretrained config: 0.5 for the
    # tf_efficientnet families) when weights are loaded, ImageNet's otherwise | imagenet | backbone
    normalization: str = "auto"

    def __post_init__(self) -> None:
        check_choice("model.normalization", self.normalization, NORMALIZATIONS)

    def resolved(self) -> ModelConfig:
        """The config with a preset name expanded to its timm name and options."""
        preset = PRESETS.get(self.backbone)
        if preset is None:
            return self
        options = {k: v for k, v in preset.items() if k != "patch_size" or not self.patch_size}
        return replace(self, **options)
