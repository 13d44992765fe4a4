"""Test time: tau-normalisation of the classifier and FixRes-style ten-crop TTA, predicted once.

tau (Kang et al., 2020): the classifier's weights ``w_c / ||w_c||^tau``, bias dropped. Then a
logit is the bias-free logit ``w_c . f`` divided by ``||w_c||^tau``: a per-class rescaling. So
each sample's top-K bias-free logits and the class norms are cached once, and any tau is applied
to the cache without a forward pass (exact when K covers the classes; otherwise a class outside
the cached top-K is taken as improbable, which is why K defaults to twice the ensemble's 10).

TTA (Touvron et al., FixRes, 2019): the image is enlarged by ``scale`` over the evaluation view
(the resize before the centre crop, ``data.transforms``), then cropped at the training size at
the four corners and the centre, each also flipped: ten views. ``none`` is the centre crop,
``flip`` the centre and its mirror, ``ten_crop`` all ten; all three come from one prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import ten_crop

from noisytail.config import ConfigError, check_range
from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import AugmentConfig, _normalize, _zoomed
from noisytail.models.network import NoisyTailNet
from noisytail.prediction import dataset_order
from noisytail.progress import progress
from noisytail.test_time.ensemble import merge_top_k


@dataclass(frozen=True)
class TTAConfig:
    """``test_time:`` in params.yaml: what is predicted once for the studies to choose from."""

    scales: tuple[float, ...] = (1.0, 1.25, 1.5)  # enlargement over the evaluation view
    top_k: int = 20  # bias-free logits cached per view (>= the ensemble's 10)
    batch_size: int = 64  # images per batch (x 10 views)

    def __post_init__(self) -> None:
        if not self.scales:
            raise ConfigError("test_time.scales: at least one scale (1.0: the evaluation view)")
        for scale in self.scales:
            check_range("test_time.scales", scale, 1.0)
        check_range("test_time.top_k", self.top_k, 1)
        check_range("test_time.batch_size", self.batch_size, 1)


# torchvision's ten_crop order: 4 corners + centre, then the same of the flipped image
TTA_MODES: dict[str, tuple[int, ...]] = {"none": (4,), "flip": (4, 9), "ten_crop": tuple(range(10))}


def enlarged_transform(size: int, channels: int, augment: AugmentConfig, scale: float):
    """Resize to ``scale`` times the evaluation resize (crops are cut from the batch)."""
    base = _zoomed(size, augment) if augment.crop == "zoom" else size
    side = max(size, round(scale * base))
    return A.Compose([A.Resize(height=side, width=side), *_normalize(channels)], strict=True)


def classifier_weights(model: NoisyTailNet) -> torch.Tensor | None:
    """The linear classifier's weight matrix (C x D), or None for heads tau does not apply to
    (a cosine head already has equal class norms)."""
    head = model.head
    return head.weight if isinstance(head, nn.Linear) else None


def classifier_terms(model: NoisyTailNet) -> dict[str, np.ndarray]:
    """The class weight norms (tau divides by their power) and the bias (the classifier as
    trained adds it); ones and zeros for heads tau does not apply to."""
    weight = classifier_weights(model)
    if weight is None:
        ones = np.ones(model.num_classes, np.float32)
        return {"norm": ones, "bias": np.zeros_like(ones)}
    bias = getattr(model.head, "bias", None)
    return {
        "norm": weight.detach().norm(dim=1).float().cpu().numpy(),
        "bias": (
            bias.detach().float().cpu().numpy()
            if bias is not None
            else np.zeros(model.num_classes, np.float32)
        ),  # fmt: skip
    }


@torch.no_grad()
def view_logits(model: NoisyTailNet, images: torch.Tensor, crop: int) -> torch.Tensor:
    """n x 10 x C bias-free logits of the ten ``crop``-sized views of each enlarged image."""
    weight = classifier_weights(model)
    views = torch.stack(ten_crop(images, [crop, crop]), dim=1)  # n x 10 x C x crop x crop
    features = model.features(views.flatten(0, 1))
    raw = F.linear(features, weight) if weight is not None else model.head(features)
    return raw.float().view(len(images), 10, -1)


@torch.no_grad()
def predict_views(
    model: NoisyTailNet,
    dataset: ImageDataset,
    crop: int,
    accelerator: Accelerator,
    *,
    top_k: int = 20,
    batch_size: int = 64,
    workers: int = 2,
) -> dict[str, np.ndarray]:
    """Per sample and each of the ten views: the top-``top_k`` bias-free logits and their
    classes; plus the class weight norms. ``dataset`` yields the enlarged images."""
    model = model.to(accelerator.device).eval()
    top_k = min(top_k, model.num_classes)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, num_workers=workers))
    rows, indices, logits = [], [], []
    for images, _, row in progress(loader, desc="ten-crop", unit="batch", leave=False,
                                   enabled=accelerator.is_local_main_process):  # fmt: skip
        with accelerator.autocast():
            value, index = view_logits(model, images, crop).topk(top_k, dim=2)
        gathered = accelerator.gather_for_metrics((row, index, value))
        rows.append(gathered[0].cpu().numpy())
        indices.append(gathered[1].cpu().numpy().astype(np.int32))
        logits.append(gathered[2].cpu().numpy().astype(np.float32))
    order = dataset_order(rows, len(dataset))
    return {
        "sample_id": np.asarray(dataset.sample_ids),
        "label": dataset.labels.numpy(),
        "index": np.concatenate(indices)[order],
        "logit": np.concatenate(logits)[order],
        **classifier_terms(model),
    }


def tau_probabilities(
    logit: np.ndarray, index: np.ndarray, norm: np.ndarray, tau: float | None,
    bias: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Softmax over the cached top-K of ``logit / ||w_c||^tau`` (any leading shape); with
    ``tau`` None, the classifier as trained: ``logit + b_c``."""
    if tau is None:
        scaled = logit + (bias[index] if bias is not None else 0.0)
    else:
        scaled = logit / np.power(norm[index], tau, dtype=np.float64)
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)


def tta_top_k(
    cache: dict[str, np.ndarray], tau: float | None, mode: str, top: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """One member's top-``top`` classes and probabilities at ``tau`` (None: the trained
    classifier, bias included), averaged over the views of ``mode``: what the member
    contributes to the ensemble."""
    if mode not in TTA_MODES:
        raise ValueError(f"TTA mode must be one of {list(TTA_MODES)}, got {mode!r}")
    views = list(TTA_MODES[mode])
    index = cache["index"][:, views]
    prob = tau_probabilities(cache["logit"][:, views], index, cache["norm"], tau,
                             cache.get("bias")) / len(views)  # fmt: skip
    n = len(index)
    return merge_top_k(index.reshape(n, -1), prob.reshape(n, -1), top)


def stack_caches(caches: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the caches of several splits (same model)."""
    keys = ("sample_id", "label", "index", "logit")
    merged = {k: np.concatenate([c[k] for c in caches]) for k in keys}
    merged["norm"], merged["bias"] = caches[0]["norm"], caches[0]["bias"]
    return merged


def load_views(
    folder: str | Path, scales: Sequence[float], split: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """The caches of ``predict_views`` for one member, keyed by scale (``"1"``, ``"1.25"``);
    only ``split``'s rows when given."""
    caches = {}
    for scale in scales:
        path = Path(folder) / f"scale_{scale:g}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the member_views stage")
        with np.load(path) as stored:
            data = {k: stored[k] for k in stored.files}
        caches[f"{scale:g}"] = data if split is None else split_rows(data, split)
    return caches


def split_rows(cache: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    """The rows of one split of a cache (the per-class arrays are shared)."""
    keep = cache["split"] == split
    return {k: v if k in ("norm", "bias") else v[keep] for k, v in cache.items() if k != "split"}
