"""FixRes-style ten-crop views, predicted once per member and scale (Touvron et al., 2019).

The image is enlarged by ``scale`` over the evaluation view (the resize before the centre crop,
``data.transforms``), then cropped at the training size at the four corners and the centre, each
also flipped: ten views. Per view the top-K *bias-free* logits are kept (``test_time.tau``: any
tau is a rescaling of them), so the studies choose tau and the TTA mode (``none``, ``flip``,
``ten_crop``: subsets of the ten) without another forward pass. The cache is exact when K covers
the classes; otherwise a class outside the cached top-K is taken as improbable, which is why K
defaults to twice the ensemble's 10, and the classifier-as-trained's top-1 (bias added) is kept
in the list even where the bias-free top-K misses it.
"""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from torchvision.transforms.v2.functional import ten_crop

from noisytail.config.data import AugmentConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import _normalize, _zoomed
from noisytail.models.network import NoisyTailNet
from noisytail.prediction import dataset_order
from noisytail.progress import progress
from noisytail.test_time.tau import classifier_terms, classifier_weights


def enlarged_transform(size: int, channels: int, augment: AugmentConfig, scale: float):
    """Resize to ``scale`` times the evaluation resize (crops are cut from the batch)."""
    base = _zoomed(size, augment) if augment.crop == "zoom" else size
    side = max(size, round(scale * base))
    return A.Compose(
        [A.Resize(height=side, width=side), *_normalize(channels, augment)], strict=True
    )


@torch.no_grad()
def view_logits(model: NoisyTailNet, images: torch.Tensor, crop: int) -> torch.Tensor:
    """n x 10 x C bias-free logits of the ten ``crop``-sized views of each enlarged image."""
    weight = classifier_weights(model)
    views = torch.stack(ten_crop(images, [crop, crop]), dim=1)  # n x 10 x C x crop x crop
    features = model.features(views.flatten(0, 1))
    raw = F.linear(features, weight) if weight is not None else model.head(features)
    return raw.float().view(len(images), 10, -1)


def keep_trained_top1(
    raw: torch.Tensor, bias: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-``top_k`` bias-free logits of each view, with the classifier-as-trained's top-1
    (bias added) in the list: where the bias lifts a class outside the bias-free top-K, it takes
    the last place, so the "as trained" incumbent of every study is the real classifier's top-1
    whatever the number of classes."""
    value, index = raw.topk(top_k, dim=2)
    trained = (raw + bias).argmax(dim=2, keepdim=True)
    missing = ~(index == trained).any(dim=2)
    index[..., -1] = torch.where(missing, trained[..., 0], index[..., -1])
    value[..., -1] = torch.where(missing, raw.gather(2, trained)[..., 0], value[..., -1])
    return value, index


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
    terms = classifier_terms(model)
    bias = torch.from_numpy(terms["bias"]).to(accelerator.device)
    loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, num_workers=workers))
    rows, indices, logits = [], [], []
    for images, _, row in progress(loader, desc="ten-crop", unit="batch", leave=False,
                                   enabled=accelerator.is_local_main_process):  # fmt: skip
        with accelerator.autocast():
            raw = view_logits(model, images, crop)
        value, index = keep_trained_top1(raw, bias, top_k)
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
        **terms,
    }
