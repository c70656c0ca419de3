"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks", ICLR): minimise the cross-entropy at the PGD
adversary ``x_adv = argmax_{||x' - x|| <= ε} CE(f(x'), y)``.

The attack is :func:`robustmaxup.attacks.pgd` with a random start, run with the model in eval
mode (BatchNorm running statistics untouched; parameters get no gradients). Validation metric:
robust accuracy under PGD-``eval_steps`` at the training ε and norm (random start).

Defaults (L∞, CIFAR-10): ε = 8/255, step 2/255, 10 steps (the PyTorch setting of Rice, Wong &
Kolter 2020; Madry et al. trained with 7 steps of 2/255). ``norm = "L2"`` switches the defaults
to ε = 128/255, step 15/255, 10 steps (Rice et al.'s L2 setting). ``attack_eps = 0`` and
``attack_step_size = 0`` mean "the norm's default"; the resolved values are what ``hparams()``
records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.attacks import NORMS, pgd
from robustmaxup.errors import UserError
from robustmaxup.methods import register_method
from robustmaxup.methods.base import LossOutput, Method, check_positive
from robustmaxup.methods.base import check_count

#: norm -> (default ε, default step size) on the [0, 1] pixel scale
DEFAULT_BUDGET = {"Linf": (8 / 255, 2 / 255), "L2": (128 / 255, 15 / 255)}


@dataclass
class AdversarialMethod(Method):
    """Shared fields, validation and validation metric of PGD-AT and TRADES."""

    family: ClassVar[str] = "adversarial"
    norm: str = "Linf"
    attack_eps: float = field(default=0.0, metadata={"help": "0: 8/255 (Linf), 128/255 (L2)"})
    attack_steps: int = 10
    attack_step_size: float = field(default=0.0, metadata={"help": "0: 2/255 (Linf), 15/255 (L2)"})
    eval_steps: int = 10

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError(f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        check_positive("attack_eps", self.attack_eps, allow_zero=True)
        check_positive("attack_step_size", self.attack_step_size, allow_zero=True)
        check_count("attack_steps", self.attack_steps, 1)
        check_count("eval_steps", self.eval_steps, 1)
        eps, step = DEFAULT_BUDGET[self.norm]
        self.attack_eps = float(self.attack_eps or eps)
        self.attack_step_size = float(self.attack_step_size or step)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """PGD-CE with a random start at the training budget, ``steps`` steps."""
        return pgd(model, x, y, eps=self.attack_eps, norm=self.norm, steps=steps,
                   step_size=self.attack_step_size, random_start=True, generator=generator)

    def evaluate(self, model, x, y, *, generator=None):
        """Robust accuracy ``[B]`` under PGD-``eval_steps`` (gradients enabled inside, since the
        engine calls this under ``torch.no_grad``)."""
        with torch.enable_grad():
            x_adv = self.attack(model, x, y, steps=int(self.eval_steps), generator=generator)
        with torch.no_grad():
            return model(x_adv).argmax(1) == y


@register_method
@dataclass
class PGDAT(AdversarialMethod):
    """Madry et al.'s PGD adversarial training (see module docstring).

    Example::

        method = PGDAT()                       # L∞, ε = 8/255, 10 steps of 2/255
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "pgd_at"

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, generator=None) -> Any:
        return self.attack(model, x, y, steps=int(self.attack_steps), generator=generator), y

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x_adv, y = prepared
        logits = model(x_adv)
        return LossOutput(F.cross_entropy(logits, y), logits.detach(), y)
