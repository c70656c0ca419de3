"""Adversarial Weight Perturbation (Wu, Xia & Wang 2020, "Adversarial Weight Perturbation Helps
Robust Generalization", NeurIPS): train at weights moved, layer by layer, in the worst direction
of the method's own loss.

For every weight tensor of dimension > 1 (convolutions, linear layers; BatchNorm parameters and
biases are not perturbed, as in the paper) one ascent step gives ``g = ∇_w loss`` and the
layer-wise relative perturbation ``v = gamma * ||w|| * g / ||g||``; the step's gradient is taken
at ``w + v``. (The authors' code takes one SGD ascent step on a proxy copy and rescales the
difference per layer to ``gamma * ||w||``: the same direction ``g/||g||``; csdongxian/AWP
AT_AWP/utils_awp.py:8-18, 37-49.)

Order of the step (``restore_after_step``). The reference perturbs, takes the gradient, *steps
the optimiser at* ``w + v`` and only then subtracts ``v`` (AT_AWP/train_cifar10.py:340-363,
trades_AWP/train_trades_cifar.py:179-206). That is the default here
(``restore_after_step = True``): the engine calls ``optimizer.step()`` inside the perturbation
and ``v`` is removed afterwards, so SGD's weight decay (and the momentum it feeds) acts on
``w + v``. ``restore_after_step = False`` restores ``w`` bitwise before the step (weight decay on
``w``), the textbook form of the paper's update.

Defaults: ``gamma = 5e-3`` (TRADES-AWP's, trades_AWP/train_trades_cifar.py:60; AT-AWP uses 0.01,
AT_AWP/train_cifar10.py:162), ``warmup = 0`` epochs without perturbation (TRADES-AWP uses 10
one-based epochs, i.e. ``warmup = 9`` here; see the ``awp_trades`` recipe).
CLI: ``--awp-gamma 0.005 [--awp-warmup 9 --awp-restore-after-step false]`` wraps any
``--method``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robustmaxup.methods.base import check_count, check_positive
from robustmaxup.methods.registry import register_perturbation
from robustmaxup.methods.weight_perturbation import (
    LossFn, PerturbationCore, loss_gradients, trainable,
)
from robustmaxup.runtime.checks import check_choice

_TINY = 1e-20


@register_perturbation
@dataclass
class AWP(PerturbationCore):
    """Layer-wise relative weight perturbation of size ``gamma`` (see module docstring).

    Example::

        awp = AWP(gamma=5e-3)
        with awp.perturbed(model, lambda: method.loss(model, prepared).loss):
            method.loss(model, prepared).loss.backward()
            optimizer.step()                  # awp.step_at_perturbed: the reference order
    """

    name: ClassVar[str] = "awp"
    gamma: float = 5e-3
    warmup: int = 0
    restore_after_step: bool = True

    def __post_init__(self) -> None:
        check_positive("awp_gamma", self.gamma)
        check_count("awp_warmup", self.warmup, 0)
        check_choice("awp_restore_after_step", self.restore_after_step, (True, False))
        super().__post_init__()

    @property
    def step_at_perturbed(self) -> bool:
        return bool(self.restore_after_step)

    def cost(self, loss_cost: float) -> float:
        return loss_cost                      # one gradient of the method's loss for the search

    def select(self, model: nn.Module) -> list[nn.Parameter]:
        return trainable(model, weights_only=True)

    def search(self, model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter],
               originals: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = loss_gradients(model, loss_fn, params)
        return [
            self.gamma * torch.linalg.vector_norm(w) * g / torch.linalg.vector_norm(g).clamp_min(_TINY)
            for w, g in zip(originals, grads)
        ]
