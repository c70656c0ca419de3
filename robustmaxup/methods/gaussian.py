"""Gaussian data augmentation (Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness
via Randomized Smoothing"): cross-entropy on ``x + δ``, δ ~ N(0, σ² I), fresh noise per batch.

Default: σ = 0.25 (the paper trains σ ∈ {0.12, 0.25, 0.5, 1.0}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from robustmaxup.methods.augment import gaussian_noise
from robustmaxup.methods.families import SmoothingMethod
from robustmaxup.methods.registry import register_method


@register_method
@dataclass
class Gaussian(SmoothingMethod):
    """Cross-entropy on one fresh Gaussian draw per example. Example: ``build_method("gaussian",
    sigma=0.5)``."""

    name: ClassVar[str] = "gaussian"

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        return gaussian_noise(x, self.sigma, generator), y
