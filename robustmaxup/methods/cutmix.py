"""CutMix (Yun, Han, Oh, Chun, Choe & Yoo 2019, "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features", ICCV): paste a random box from a partner image.

Per batch: ``λ ~ Beta(alpha, alpha)``, a box of size ``(W·√(1-λ), H·√(1-λ))`` (integer parts)
centred at a uniformly random pixel and clipped to the image, and a random pairing ``π``. Inside
the box the pixels of ``x[π]`` replace those of ``x``; the label weight is recomputed from the box
actually pasted, ``λ' = 1 - box_area / (W·H)``::

    ỹ = λ' onehot(y) + (1 - λ') onehot(y[π])

Application probability. The reference applies CutMix to a whole batch with probability
``cutmix_prob`` and otherwise trains on the clean batch (clovaai/CutMix-PyTorch train.py:227-228);
its CIFAR command uses ``--cutmix_prob 0.5`` and its ImageNet command 1.0 (README.md:55, 70).
The method ``cutmix`` defaults to the CIFAR value, ``cutmix_prob = 0.5``; the augmentation (what
``--method maxup --augment cutmix`` draws its copies from) always mixes (``prob = 1``).

Default ``alpha = 1.0`` (README.md:54, 69; the option ``mix_alpha``). Registered as augmentation and method ``cutmix``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robustmaxup.methods.augment import Mixed, mix_targets, random_partner, sample_beta
from robustmaxup.methods.base import Augmentation, check_positive
from robustmaxup.methods.families import MixingMethod
from robustmaxup.methods.registry import register_augmentation, register_method
from robustmaxup.runtime.checks import check_range


def cut_box(height: int, width: int, lam: float, x: torch.Tensor,
            generator: torch.Generator | None) -> tuple[int, int, int, int]:
    """CutMix's box ``(y1, y2, x1, x2)`` (half-open) for mixing weight ``lam``."""
    ratio = (1.0 - lam) ** 0.5
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(height, (), generator=generator, device=x.device).item())
    cx = int(torch.randint(width, (), generator=generator, device=x.device).item())
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y1, y2, x1, x2


def cutmix_batch(x: torch.Tensor, y: torch.Tensor, *, num_classes: int, alpha: float = 1.0,
                 prob: float = 1.0, generator: torch.Generator | None = None) -> Mixed:
    """CutMix of a batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]``; ``lam`` is the area-corrected λ'.
    With probability ``1 - prob`` (one uniform draw per batch, taken first, as in the reference)
    the batch is returned unmixed: ``lam = 1``, one-hot targets, each example its own partner.

    Example::

        mixed = cutmix_batch(x, y, num_classes=10, prob=0.5, generator=g)
    """
    if prob < 1.0:
        u = torch.rand((), generator=generator, device=x.device, dtype=torch.float64).item()
        if u >= prob:
            partner = torch.arange(x.shape[0], device=x.device)
            return Mixed(x.clone(), mix_targets(y, partner, 1.0, num_classes, x.dtype), 1.0, partner)
    lam = sample_beta(alpha, x, generator)
    partner = random_partner(x, generator)
    height, width = x.shape[-2:]
    y1, y2, x1, x2 = cut_box(height, width, lam, x, generator)
    x_mix = x.clone()
    x_mix[..., y1:y2, x1:x2] = x[partner][..., y1:y2, x1:x2]
    lam_area = 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
    return Mixed(x_mix, mix_targets(y, partner, lam_area, num_classes, x.dtype), lam_area, partner)


@register_augmentation
@dataclass
class CutMixAugmentation(Augmentation):
    """CutMix as an augmentation: ``(x̃, ỹ [B, K])``."""

    name: ClassVar[str] = "cutmix"
    mixes_labels: ClassVar[bool] = True
    mix_alpha: float = 1.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        check_positive("mix_alpha", self.mix_alpha)
        check_range("cutmix_prob", self.prob, 0, 1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        mixed = cutmix_batch(x, y, num_classes=num_classes, alpha=self.mix_alpha, prob=self.prob,
                             generator=generator)
        return mixed.x, mixed.target


@register_method
@dataclass
class CutMix(MixingMethod):
    """Train on CutMix batches, each mixed with probability ``cutmix_prob``. Example:
    ``build_method("cutmix", mix_alpha=1.0, cutmix_prob=0.5)``."""

    name: ClassVar[str] = "cutmix"
    mix_alpha: float = 1.0
    cutmix_prob: float = 0.5

    def __post_init__(self) -> None:
        check_positive("mix_alpha", self.mix_alpha)
        check_range("cutmix_prob", self.cutmix_prob, 0, 1)

    def augmentation(self) -> Augmentation:
        return CutMixAugmentation(mix_alpha=self.mix_alpha, prob=self.cutmix_prob)
