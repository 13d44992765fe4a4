"""Classifier heads: linear, cosine, learnable weight scaling (LWS), and tau-normalisation."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class CosineClassifier(nn.Module):
    """Logits = scale * cos(feature, class weight): every class has the same weight norm."""

    def __init__(self, in_features: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class LearnableWeightScaling(nn.Module):
    """LWS (Kang et al., 2020): the classifier's logits times a learned per-class scale."""

    def __init__(self, classifier: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.class_scale = nn.Parameter(torch.ones(num_classes))

    @property
    def weight(self) -> torch.Tensor:
        return self.classifier.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x) * self.class_scale


HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "linear": nn.Linear,
    "cosine": CosineClassifier,
}


def build_head(kind: str, in_features: int, num_classes: int, lws: bool = False) -> nn.Module:
    if kind not in HEADS:
        raise ValueError(f"model.head must be one of {sorted(HEADS)}, got {kind!r}")
    head = HEADS[kind](in_features, num_classes)
    return LearnableWeightScaling(head, num_classes) if lws else head


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """``w_c / ||w_c|| ** tau``: tau = 0 keeps the weights, tau = 1 equalises the class norms."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(tau)
