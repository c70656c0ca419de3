"""Augmentations: what MaxUp maximises over, and what the augmentation methods train on.

An augmentation maps a clean batch to one random augmented copy::

    x_aug, target = aug(x, y, num_classes=K, generator=g)

``x`` is ``[B, C, H, W]`` in [0, 1], ``y`` hard labels ``[B]``. ``target`` is hard labels ``[B]``
when the augmentation keeps labels (Gaussian noise), or label distributions ``[B, K]`` that sum
to one per row (mixup, CutMix, k-mixup). Each call draws fresh randomness from ``generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robustmaxup.registry import Registry


@dataclass
class Augmentation:
    name: ClassVar[str] = "identity"
    mixes_labels: ClassVar[bool] = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y


AUGMENTATIONS: Registry[type[Augmentation]] = Registry("augmentation")


def register_augmentation(cls: type[Augmentation]) -> type[Augmentation]:
    AUGMENTATIONS.register(cls.name)(cls)
    return cls


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x + δ``, δ ~ N(0, σ² I), drawn on ``x``'s device in ``x``'s dtype; fresh every call."""
    noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return x + sigma * noise


def draw_noise(x: torch.Tensor, m: int, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    """``m`` Gaussian noise draws per example, ``[m, B, C, H, W]``, on ``x``'s device/dtype."""
    return torch.randn((m, *x.shape), generator=generator, device=x.device, dtype=x.dtype) * sigma


@register_augmentation
@dataclass
class GaussianNoise(Augmentation):
    """Additive isotropic Gaussian noise of standard deviation ``sigma`` (pixel scale)."""

    name: ClassVar[str] = "gaussian"
    sigma: float = 0.25

    def __call__(self, x, y, *, num_classes, generator=None):
        return gaussian_noise(x, self.sigma, generator), y
