"""mixup (Zhang, Cisse, Dauphin & Lopez-Paz 2018, "mixup: Beyond Empirical Risk Minimization",
ICLR): convex combinations of pairs of examples and of their labels.

One ``λ ~ Beta(alpha, alpha)`` per batch and a random pairing (permutation) ``π`` of the batch::

    x̃ = λ x + (1 - λ) x[π],     ỹ = λ onehot(y) + (1 - λ) onehot(y[π])

Each row of ỹ sums to one, and since π is a permutation the batch's label mass per class is
unchanged. Default ``alpha = 1.0`` (the option ``mix_alpha``: ``--alpha`` is certification's
failure probability). Registered as the augmentation ``mixup`` (for
``--method maxup --augment mixup``) and as the method ``mixup`` (soft cross-entropy on one mixed
batch per step, validated by clean accuracy).

What the mixing augmentations share (:class:`~robustmaxup.methods.augment.Mixed`,
:func:`~robustmaxup.methods.augment.sample_beta`, ...) is in :mod:`robustmaxup.methods.augment`;
the method base :class:`~robustmaxup.methods.families.MixingMethod` in
:mod:`robustmaxup.methods.families`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robustmaxup.methods.augment import Mixed, mix_targets, random_partner, sample_beta
from robustmaxup.methods.base import Augmentation, check_positive
from robustmaxup.methods.families import MixingMethod
from robustmaxup.methods.registry import register_augmentation, register_method


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
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        check_positive("mix_alpha", self.mix_alpha)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = mixup_batch(x, y, num_classes=num_classes, alpha=self.mix_alpha, generator=generator)
        return mixed.x, mixed.target


@register_method
@dataclass
class Mixup(MixingMethod):
    """Train on mixup batches (see module docstring). Example: ``build_method("mixup", mix_alpha=1.0)``."""

    name: ClassVar[str] = "mixup"
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        check_positive("mix_alpha", self.mix_alpha)

    def augmentation(self) -> Augmentation:
        return MixupAugmentation(mix_alpha=self.mix_alpha)
