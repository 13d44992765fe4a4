"""tau-normalisation on cached logits (Kang et al., 2020).

The classifier's weights ``w_c / ||w_c||^tau``, bias dropped: a logit is then the bias-free
logit ``w_c . f`` divided by ``||w_c||^tau``, a per-class rescaling. So the bias-free logits and
the class norms are cached once and any tau is applied to the cache without a forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # the model is only read here
    from noisytail.models.network import NoisyTailNet


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
