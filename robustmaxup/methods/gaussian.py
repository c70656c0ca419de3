"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness
via Randomized Smoothing"): cross-entropy on ``x + δ``, δ ~ N(0, σ² I), fresh noise per batch.

Default: σ = 0.25 (the paper trains σ ∈ {0.12, 0.25, 0.5, 1.0}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustmaxup.methods import register_method
from robustmaxup.methods.augment import gaussian_noise
from robustmaxup.methods.base import Method, check_positive


@dataclass
class SmoothingMethod(Method):
    """Base of the methods that train a base classifier for randomized smoothing at ``sigma``;
    validated by accuracy under one fresh Gaussian draw."""

    family: ClassVar[str] = "smoothing"
    sigma: float = 0.25

    def __post_init__(self) -> None:
        check_positive("sigma", self.sigma)

    def evaluate(self, model, x, y, *, generator=None):
        return model(gaussian_noise(x, self.sigma, generator)).argmax(1) == y


@register_method
@dataclass
class Gaussian(SmoothingMethod):
    name: ClassVar[str] = "gaussian"

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator=None):
        return gaussian_noise(x, self.sigma, generator), y
