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

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.methods.base import LossOutput
from robustmaxup.methods.families import AdversarialMethod
from robustmaxup.methods.registry import register_method


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
