"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu 2018, "Towards Deep
Learning Models Resistant to Adversarial Attacks", ICLR): minimise the cross-entropy at the PGD
adversary ``x_adv = argmax_{||x' - x|| <= ε} CE(f(x'), y)``.

The attack is :func:`robustmaxup.attacks.pgd` from Rice et al.'s random start
(:func:`~robustmaxup.methods.families.reference_start`: uniform in the L∞ box; for L2 a uniform
*radius*, locuslab/robust_overfitting train_cifar.py:76-87). Parameters get no gradients during
it. Model mode during the attack (``attack_train_mode``):

* False (default): eval mode, BatchNorm running statistics;
* True: train mode, BatchNorm normalising with the batch's statistics — what Rice et al.'s code
  does, since it attacks inside the training loop with the model in train mode
  (train_cifar.py:294, 311-316); the ``pgd_at`` and ``awp_at`` recipes set it. Unlike that code,
  the attack's forwards do not update the running statistics (only the training forward does).

Validation metric: robust accuracy under PGD-``eval_steps`` at the training ε and norm, in eval
mode.

Defaults (L∞, CIFAR-10): ε = 8/255, step 2/255, 10 steps (Rice et al.'s setting,
train_cifar.py:139-142; Madry et al. trained with 7 steps of 2/255). ``norm = "L2"`` switches the
defaults to ε = 128/255, step 15/255, 10 steps (UNVERIFIED: given as Rice et al.'s L2 setting,
but their code's flags default to L∞ and fix no L2 values, train_cifar.py:139-144; no recipe
uses L2). ``attack_eps = 0`` and
``attack_step_size = 0`` mean "the norm's default"; the resolved values are what ``hparams()``
records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.methods.base import LossOutput
from robustmaxup.methods.families import AdversarialMethod
from robustmaxup.methods.registry import register_method
from robustmaxup.runtime.checks import check_choice


@register_method
@dataclass
class PGDAT(AdversarialMethod):
    """Madry et al.'s PGD adversarial training (see module docstring).

    Example::

        method = PGDAT()                       # L∞, ε = 8/255, 10 steps of 2/255
        method = PGDAT(attack_train_mode=True)  # Rice et al.: attack with batch statistics
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "pgd_at"
    attack_train_mode: bool = field(default=False, metadata={
        "help": "true: attack in train mode, BatchNorm batch statistics (Rice et al.)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("attack_train_mode", self.attack_train_mode, (True, False))

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        return self.attack(model, x, y, steps=int(self.attack_steps), generator=generator,
                           train_mode=bool(self.attack_train_mode)), y

    def prepare_cost(self) -> float:
        return 3.0 * self.attack_steps

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x_adv, y = prepared
        logits = model(x_adv)
        return LossOutput(F.cross_entropy(logits, y), logits.detach(), y)
