"""tau-normalisation on cached logits and ten-crop TTA against direct forward passes."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import tiny_manifest
from torchvision.transforms.v2.functional import ten_crop

from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import eval_transform
from noisytail.models.heads import tau_normalize
from noisytail.models.network import build_network
from noisytail.test_time.cache import TTA_MODES, tta_top_k
from noisytail.test_time.tau import tau_probabilities
from noisytail.test_time.views import enlarged_transform, predict_views

ZOOM = AugmentConfig(crop="zoom", margin=0.125)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    manifest = tiny_manifest(tmp_path_factory.mktemp("tt"), per_class=(6, 5, 4))
    torch.manual_seed(0)
    model = build_network(ModelConfig(backbone="test_resnet", embedding_dim=0, bnneck=False,
                                      in_chans=3), manifest.num_classes).eval()  # fmt: skip
    with torch.no_grad():  # unequal class norms and a bias, so that tau and the bias matter
        model.head.weight.mul_(torch.tensor([[0.5], [1.0], [3.0]]))
        model.head.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    dataset = ImageDataset.from_manifest(manifest, "train",
                                         enlarged_transform(32, 3, ZOOM, 1.0))  # fmt: skip
    cache = predict_views(model, dataset, 32, Accelerator(cpu=True), top_k=3, workers=0)
    plain = ImageDataset.from_manifest(manifest, "train", eval_transform(32, 3, ZOOM))
    images = torch.stack([plain[i][0] for i in range(len(plain))])
    return model, cache, images


def softmax(x):
    return torch.softmax(x, dim=1).numpy()


def dense(index, prob, classes=3):
    out = np.zeros((len(index), classes))
    np.put_along_axis(out, index, prob, axis=1)
    return out


def test_tau_zero_is_the_plain_classifier_without_its_bias(setup):
    model, cache, images = setup
    with torch.no_grad():
        expected = softmax(model.features(images) @ model.head.weight.T)
        with_bias = softmax(model(images))
    index, prob = tta_top_k(cache, tau=0.0, mode="none", top=3)
    np.testing.assert_allclose(dense(index, prob), expected, atol=1e-5)
    assert not np.allclose(expected, with_bias, atol=1e-3)  # the bias did matter
    index, prob = tta_top_k(cache, tau=None, mode="none", top=3)  # the classifier as trained
    np.testing.assert_allclose(dense(index, prob), with_bias, atol=1e-5)


@pytest.mark.parametrize("tau", [0.5, 1.0])
def test_rescaled_cache_equals_a_forward_pass_with_normalised_weights(setup, tau):
    model, cache, images = setup
    with torch.no_grad():
        weight = tau_normalize(model.head.weight, tau)
        expected = softmax(model.features(images) @ weight.T)
    index, prob = tta_top_k(cache, tau=tau, mode="none", top=3)
    np.testing.assert_allclose(dense(index, prob), expected, atol=1e-5)
    untouched = dense(*tta_top_k(cache, tau=0.0, mode="none", top=3))
    assert not np.allclose(expected, untouched, atol=1e-3)


def test_flip_and_ten_crop_average_their_views(setup):
    cache = setup[1]
    views = cache["index"], cache["logit"]
    probs = tau_probabilities(views[1], views[0], cache["norm"], 0.0)
    per_view = np.stack([dense(views[0][:, v], probs[:, v]) for v in range(10)], axis=1)
    for mode, chosen in TTA_MODES.items():
        index, prob = tta_top_k(cache, tau=0.0, mode=mode, top=3)
        np.testing.assert_allclose(dense(index, prob), per_view[:, list(chosen)].mean(1),
                                   atol=1e-6)  # fmt: skip


def test_ten_crop_geometry_on_a_hand_made_image():
    """Scale 1.5 of a zoom view at 8 px: resize to round(1.5 * 9) = 14, then crops of 8 at the
    corners and the centre, and the same of the mirrored image."""
    transform = enlarged_transform(8, 1, AugmentConfig(crop="zoom", margin=0.125), 1.5)
    ramp = np.tile(np.arange(14, dtype=np.uint8)[None, :, None] * 10, (14, 1, 1))
    image = transform(image=ramp)["image"]
    assert image.shape == (1, 14, 14)
    views = ten_crop(image[None], [8, 8])
    columns = [v[0, 0, 0].argsort().tolist() for v in views]  # ramp: left-to-right order
    first = [v[0, 0, 0, 0].item() for v in views]
    left, right, centre = image[0, 0, 0].item(), image[0, 0, 6].item(), image[0, 0, 3].item()
    assert first[0] == first[2] == left and first[1] == first[3] == right
    assert first[4] == centre
    assert columns[4] == list(range(8)) and columns[9] == list(range(7, -1, -1))  # mirrored


def test_scale_one_centre_view_is_the_standard_evaluation(setup):
    model, cache, images = setup
    with torch.no_grad():
        logits = model.features(images) @ model.head.weight.T
    top = logits.topk(3, dim=1)
    np.testing.assert_allclose(cache["logit"][:, 4], top.values.numpy(), atol=1e-5)
    assert (cache["index"][:, 4] == top.indices.numpy()).all()
    np.testing.assert_allclose(cache["norm"], model.head.weight.norm(dim=1).detach().numpy())


def test_an_unknown_mode_is_named(setup):
    with pytest.raises(ValueError, match="TTA mode must be one of"):
        tta_top_k(setup[1], 0.0, "five_crop")


def test_ensemble_rows_builds_members_subsets_and_the_weighted_ensemble(setup):
    from noisytail.test_time.ensemble import ensemble_top_k
    from noisytail.test_time.scoring import ensemble_rows, member_top_k

    _, cache, _ = setup
    views = {"a": {"1": cache}, "b": {"1": cache}}
    tuned = {"a": {"tau": 1.0, "scale": 1.0, "mode": "ten_crop", "weight": 0.9},
             "b": {"tau": None, "scale": 1.0, "mode": "none", "weight": 0.1}}  # fmt: skip
    rows, (index, prob) = ensemble_rows(views, tuned, "1", top=3, subsets={"only_a": ["a"]})
    assert set(rows) == {"a/as_trained", "a/tau", "a/tau+tta", "b/as_trained", "b/tau",
                         "b/tau+tta", "ensemble/equal_weights", "only_a", "ensemble"}  # fmt: skip
    a = member_top_k(views["a"], tuned["a"], 3)
    np.testing.assert_array_equal(rows["a/tau+tta"], a[0])
    np.testing.assert_array_equal(rows["only_a"][:, 0], a[0][:, 0])  # one member: itself
    b = tta_top_k(cache, None, "none", 3)
    np.testing.assert_array_equal(rows["b/as_trained"], b[0])
    expected = ensemble_top_k([a, b], [0.9, 0.1], k=5, top=3)
    np.testing.assert_array_equal(index, expected[0])
    np.testing.assert_allclose(prob, expected[1])


def test_tau_can_bring_in_a_class_the_plain_top_lacked(setup):
    from noisytail.test_time.cache import moved_into_top

    _, cache, _ = setup
    assert moved_into_top(cache, None, top=1) == 0.0  # as trained: nothing moves
    moved = moved_into_top(cache, 1.0, top=1)  # norms 0.5 / 1 / 3: tau=1 reorders the top
    assert 0.0 < moved <= 1.0
    top1_plain = tta_top_k(cache, None, "none", 1)[0][:, 0]
    top1_tau = tta_top_k(cache, 1.0, "none", 1)[0][:, 0]
    assert moved == pytest.approx((top1_plain != top1_tau).mean())


def test_val_coverage_per_group():
    from noisytail.metrics import coverage_by_group

    counts = np.array([5000, 300, 300, 10, 10, 10])  # many, medium x2, few x3
    labels = np.array([0, 0, 1, 3, 3])  # no val for classes 2, 4, 5
    assert coverage_by_group(labels, counts) == {
        "many": {"images": 2, "classes": 1, "of_classes": 1},
        "medium": {"images": 1, "classes": 1, "of_classes": 2},
        "few": {"images": 2, "classes": 1, "of_classes": 3}}  # fmt: skip


def test_the_trained_top1_stays_in_the_cached_list():
    """A bias that lifts a class outside the bias-free top-2: it takes the last place, and the
    list is unchanged where the trained top-1 is already in it."""
    import torch

    from noisytail.test_time.views import keep_trained_top1

    raw = torch.tensor([[[3.0, 2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0, 3.0]]])  # 2 samples x 1 view
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])
    value, index = keep_trained_top1(raw.clone(), bias, 2)
    assert index.tolist() == [[[0, 3]], [[3, 2]]]  # sample 0: class 3 (3 + 5 = 8) brought in
    assert value.tolist() == [[[3.0, 0.0]], [[3.0, 2.0]]]  # its bias-free logit


def test_ten_crop_at_the_pretrained_profiles_sizes_crops_the_enlarged_view():
    """The seed's FixRes at profiles/pretrained.yaml's sizes: a member fine-tuned at 96 px with
    the zoom geometry (train: resize 108, random crop 96; test: resize 108, centre crop 96) is
    tested at scale s on the image resized to round(s * 108) and cut into ten 96 px views, so
    an object is shown s times larger than in training; scale 1's centre view is the test view."""
    import yaml
    from conftest import REPO

    profile = yaml.safe_load((REPO / "profiles" / "pretrained.yaml").read_text())
    size = profile["hires"]["image_size"]
    augment = AugmentConfig.from_params(profile["augment"])
    assert (size, augment.crop, augment.margin) == (96, "zoom", 0.125)
    source = np.zeros((28, 28, 3), dtype=np.uint8)
    source[9:19, 9:19] = 255  # a 10 px square in the middle of a 28 px image
    test_view = eval_transform(size, 3, augment)(image=source)["image"]
    for scale in profile["test_time"]["scales"]:
        image = enlarged_transform(size, 3, augment, scale)(image=source)["image"]
        side = round(scale * 108)
        assert image.shape == (3, side, side)
        views = ten_crop(image[None], [size, size])
        assert all(v.shape == (1, 3, size, size) for v in views)
        torch.testing.assert_close(views[0][0], image[:, :size, :size])  # top-left corner
        torch.testing.assert_close(views[3][0], image[:, -size:, -size:])  # bottom-right
        centre = views[4][0, 0]
        middle = (centre.max() + centre.min()) / 2  # the square at half its contrast
        width = (centre[size // 2] > middle).sum().item()
        assert abs(width - 10 * side / 28) <= 2, (scale, width)
        if scale == 1.0:
            torch.testing.assert_close(views[4][0], test_view)
