"""The method families: shared bases of the methods that differ only in how they build a batch.

- :class:`SmoothingMethod`: trains a base classifier for randomized smoothing at ``sigma``;
  validated by accuracy under one fresh Gaussian draw (gaussian, consistency, MACER, SmoothAdv,
  SmoothMix).
- :class:`AdversarialMethod`: PGD adversarial training at a norm ball (PGD-AT, TRADES);
  validated by PGD robust accuracy.
- :class:`MixingMethod`: soft cross-entropy on one augmented (mixed) batch per step (mixup,
  CutMix, k-mixup); validated by clean accuracy.
- :func:`warmup_fraction`: the linear warm-up schedule SmoothAdv and SmoothMix use.

Each method module imports its base from here, never from another method module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustmaxup.attacks import NORMS, pgd
from robustmaxup.methods.augment import gaussian_noise
from robustmaxup.methods.base import (
    Augmentation, LossOutput, Method, check_count, check_positive, soft_cross_entropy,
)
from robustmaxup.runtime.checks import check_choice

__all__ = ["SmoothingMethod", "AdversarialMethod", "MixingMethod", "DEFAULT_BUDGET", "warmup_fraction",
           "reference_start"]


def warmup_fraction(epoch: int, warmup: int) -> float:
    """``min(1, (epoch + 1) / warmup)``: the share of the full strength in epoch ``epoch``."""
    return 1.0 if warmup <= 1 else min(1.0, (epoch + 1) / warmup)


# --------------------------------------------------------------------------------------------
# Randomized smoothing
# --------------------------------------------------------------------------------------------


@dataclass
class SmoothingMethod(Method):
    """Base of the methods that train a base classifier for randomized smoothing at ``sigma``;
    validated by accuracy under one fresh Gaussian draw."""

    family: ClassVar[str] = "smoothing"
    sigma: float = 0.25

    def __post_init__(self) -> None:
        check_positive("sigma", self.sigma)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return model(gaussian_noise(x, self.sigma, generator)).argmax(1) == y


# --------------------------------------------------------------------------------------------
# Adversarial training
# --------------------------------------------------------------------------------------------

#: norm -> (default ε, default step size) on the [0, 1] pixel scale
DEFAULT_BUDGET = {"Linf": (8 / 255, 2 / 255), "L2": (128 / 255, 15 / 255)}


def reference_start(x: torch.Tensor, eps: float, norm: str,
                    generator: torch.Generator | None) -> torch.Tensor:
    """The random start of Rice et al.'s PGD (locuslab/robust_overfitting train_cifar.py:76-87,
    also csdongxian/AWP AT_AWP/train_cifar10.py:78-89): L∞ uniform in ``[-eps, eps]`` per
    coordinate; L2 a Gaussian direction scaled to radius ``eps * U``, ``U ~ U(0, 1)`` — uniform
    in the *radius*, not in the ball's volume (which would put almost every start on the
    sphere). The attack then clips ``x + delta`` to the [0, 1] box, as the reference does."""
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    radius = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device,
                        dtype=x.dtype)
    return direction / norms * radius * eps


@dataclass
class AdversarialMethod(Method):
    """Shared fields, validation and validation metric of PGD-AT and TRADES.

    ``attack_eps = 0`` and ``attack_step_size = 0`` mean "the norm's default"
    (:data:`DEFAULT_BUDGET`); the resolved values are what ``hparams()`` records."""

    family: ClassVar[str] = "adversarial"
    norm: str = "Linf"
    attack_eps: float = field(default=0.0, metadata={"help": "0: 8/255 (Linf), 128/255 (L2)"})
    attack_steps: int = 10
    attack_step_size: float = field(default=0.0, metadata={"help": "0: 2/255 (Linf), 15/255 (L2)"})
    eval_steps: int = 10

    def __post_init__(self) -> None:
        check_choice("norm", self.norm, NORMS)
        check_positive("attack_eps", self.attack_eps, allow_zero=True)
        check_positive("attack_step_size", self.attack_step_size, allow_zero=True)
        check_count("attack_steps", self.attack_steps, 1)
        check_count("eval_steps", self.eval_steps, 1)
        eps, step = DEFAULT_BUDGET[self.norm]
        self.attack_eps = float(self.attack_eps or eps)
        self.attack_step_size = float(self.attack_step_size or step)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
               generator: torch.Generator | None = None, train_mode: bool = False) -> torch.Tensor:
        """PGD-CE at the training budget, ``steps`` steps, from Rice et al.'s random start
        (:func:`reference_start`); ``train_mode``: BatchNorm batch statistics."""
        start = reference_start(x, self.attack_eps, self.norm, generator)
        return pgd(model, x, y, eps=self.attack_eps, norm=self.norm, steps=steps,
                   step_size=self.attack_step_size, delta_init=start, train_mode=train_mode,
                   check_inputs=False)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Robust accuracy ``[B]`` under PGD-``eval_steps`` (gradients enabled inside, since the
        engine calls this under ``torch.no_grad``)."""
        with torch.enable_grad():
            x_adv = self.attack(model, x, y, steps=int(self.eval_steps), generator=generator)
        with torch.no_grad():
            return model(x_adv).argmax(1) == y


# --------------------------------------------------------------------------------------------
# Mixing augmentations
# --------------------------------------------------------------------------------------------


@dataclass
class MixingMethod(Method):
    """Base of the methods that train with soft cross-entropy on one augmented batch per step;
    subclasses return their augmentation from :meth:`augmentation`. Train accuracy is counted
    against each row's dominant label."""

    family: ClassVar[str] = "standard"

    def augmentation(self) -> Augmentation:
        raise NotImplementedError

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        return self.augmentation()(x, y, num_classes=self.num_classes, generator=generator)

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, target = prepared
        logits = model(x)
        return LossOutput(soft_cross_entropy(logits, target), logits.detach(), target.argmax(1))
