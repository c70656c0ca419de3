"""Augmentations: what MaxUp maximises over, and what the augmentation methods train on.

An augmentation maps a clean batch to one random augmented copy::

    x_aug, target = aug(x, y, num_classes=K, generator=g)

``x`` is ``[B, C, H, W]`` in [0, 1], ``y`` hard labels ``[B]``. ``target`` is hard labels ``[B]``
when the augmentation keeps labels (Gaussian noise), or label distributions ``[B, K]`` that sum
to one per row (mixup, CutMix, k-mixup). Each call draws fresh randomness from ``generator``.

This module holds the primitives the augmentations and methods share: Gaussian noise
(:func:`gaussian_noise`, :func:`draw_noise`) and the pieces of every mixing augmentation
(:class:`Mixed`, :func:`sample_beta`, :func:`random_partner`, :func:`mix_targets`). The mixing
augmentations themselves live with their methods (mixup.py, cutmix.py, kmixup.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_dist

from robustmaxup.methods.base import Augmentation
from robustmaxup.methods.registry import AUGMENTATIONS, register_augmentation

__all__ = [
    "AUGMENTATIONS", "Augmentation", "register_augmentation", "gaussian_noise", "draw_noise",
    "GaussianNoise", "Mixed", "sample_beta", "random_partner", "mix_targets",
]


# --------------------------------------------------------------------------------------------
# Gaussian noise
# --------------------------------------------------------------------------------------------


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

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return gaussian_noise(x, self.sigma, generator), y


# --------------------------------------------------------------------------------------------
# What the mixing augmentations (mixup, CutMix, k-mixup) share
# --------------------------------------------------------------------------------------------


class Mixed(NamedTuple):
    """A mixed batch: inputs ``x`` ``[B, ...]``, soft targets ``target`` ``[B, K]``, the weight
    ``lam`` of the original example (float, or ``[B]`` tensor) and the ``partner`` index ``[B]``."""

    x: torch.Tensor
    target: torch.Tensor
    lam: float
    partner: torch.Tensor


def sample_beta(alpha: float, x: torch.Tensor, generator: torch.Generator | None) -> float:
    """One draw of ``Beta(alpha, alpha)`` from ``generator`` (inverse CDF of a uniform drawn on
    ``x``'s device; one host copy)."""
    u = torch.rand((), generator=generator, device=x.device, dtype=torch.float64).item()
    return float(beta_dist.ppf(u, alpha, alpha))


def random_partner(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A uniformly random permutation of the batch indices ``[B]`` on ``x``'s device."""
    return torch.randperm(x.shape[0], generator=generator, device=x.device)


def mix_targets(y: torch.Tensor, partner: torch.Tensor, lam: float | torch.Tensor, num_classes: int,
                dtype: torch.dtype) -> torch.Tensor:
    """``lam · onehot(y) + (1 - lam) · onehot(y[partner])`` ``[B, K]``."""
    if num_classes < 1:
        raise ValueError("mixing needs the number of classes: call method.setup(num_classes=...)")
    one_hot = F.one_hot(y, num_classes).to(dtype)
    lam_t = torch.as_tensor(lam, dtype=dtype, device=y.device)
    if lam_t.dim() == 1:
        lam_t = lam_t.unsqueeze(1)
    return lam_t * one_hot + (1 - lam_t) * one_hot[partner]
