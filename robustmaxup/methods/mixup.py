"""mixup (Zhang, Cisse, Dauphin & Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization",
ICLR): convex combinations of pairs of examples and of their labels.

One ``λ ~ Beta(alpha, alpha)`` per batch and a random pairing (permutation) ``π`` of the batch::

    x̃ = λ x + (1 - λ) x[π],     ỹ = λ onehot(y) + (1 - λ) onehot(y[π])

Each row of ỹ sums to one, and since π is a permutation the batch's label mass per class is
unchanged. Default ``alpha = 1.0``. Registered as the augmentation ``mixup`` (for
``--method maxup --augment mixup``) and as the method ``mixup`` (soft cross-entropy on one mixed
batch per step, validated by clean accuracy).

This module also holds what the mixing augmentations share: :class:`Mixed`, :func:`sample_beta`,
:func:`mix_targets` and the method base :class:`MixingMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from scipy.stats import beta as beta_dist
from torch import nn

from robustmaxup.methods import register_method
from robustmaxup.methods.augment import Augmentation, register_augmentation
from robustmaxup.methods.base import LossOutput, Method, check_positive, soft_cross_entropy


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


def mixup_batch(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, alpha: float = 1.0,
                generator: torch.Generator | None = None) -> Mixed:
    """mixup of a batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]`` (see module docstring).

    Example::

        mixed = mixup_batch(x, y, num_classes=10, alpha=1.0, generator=g)
        loss = soft_cross_entropy(model(mixed.x), mixed.target)
    """
    lam = sample_beta(alpha, x, generator)
    partner = random_partner(x, generator)
    x_mix = lam * x + (1 - lam) * x[partner]
    return Mixed(x_mix, mix_targets(y, partner, lam, num_classes, x.dtype), lam, partner)


@register_augmentation
@dataclass
class MixupAugmentation(Augmentation):
    """mixup as an augmentation: ``(x̃, ỹ [B, K])``."""

    name: ClassVar[str] = "mixup"
    mixes_labels: ClassVar[bool] = True
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_positive("alpha", self.alpha)

    def __call__(self, x, y, *, num_classes, generator=None):
        mixed = mixup_batch(x, y, num_classes=num_classes, alpha=self.alpha, generator=generator)
        return mixed.x, mixed.target


@dataclass
class MixingMethod(Method):
    """Base of the methods that train with soft cross-entropy on one augmented batch per step;
    subclasses return their augmentation from :meth:`augmentation`. Train accuracy is counted
    against each row's dominant label."""

    family: ClassVar[str] = "standard"

    def augmentation(self) -> Augmentation:
        raise NotImplementedError

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator=None) -> Any:
        return self.augmentation()(x, y, num_classes=self.num_classes, generator=generator)

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, target = prepared
        logits = model(x)
        return LossOutput(soft_cross_entropy(logits, target), logits.detach(), target.argmax(1))


@register_method
@dataclass
class Mixup(MixingMethod):
    """Train on mixup batches (see module docstring). Example: ``build_method("mixup", alpha=1.0)``."""

    name: ClassVar[str] = "mixup"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        check_positive("alpha", self.alpha)

    def augmentation(self) -> Augmentation:
        return MixupAugmentation(alpha=self.alpha)
