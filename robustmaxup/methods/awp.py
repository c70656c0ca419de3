"""Adversarial Weight Perturbation (Wu, Xia & Wang 2020, "Adversarial Weight Perturbation Helps
Robust Generalization", NeurIPS): train at weights moved, layer by layer, in the worst direction
of the method's own loss.

For every weight tensor of dimension > 1 (convolutions, linear layers; BatchNorm parameters and
biases are not perturbed, as in the paper) one ascent step gives ``g = ∇_w loss`` and the
layer-wise relative perturbation ``v = gamma * ||w|| * g / ||g||``; the step's gradient is taken
at ``w + v`` and applied to ``w``. (The authors' code takes one SGD ascent step on a proxy copy
and rescales the difference per layer to ``gamma * ||w||``: the same direction ``g/||g||``.)

Defaults: ``gamma = 5e-3`` (the paper's value for AT-AWP and TRADES-AWP on CIFAR-10),
``warmup = 0`` epochs without perturbation (the authors' TRADES-AWP script uses 10).
CLI: ``--awp 0.005 [--awp-warmup 10]`` wraps any ``--method``.
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

_TINY = 1e-20


@register_perturbation
@dataclass
class AWP(PerturbationCore):
    """Layer-wise relative weight perturbation of size ``gamma`` (see module docstring).

    Example::

        awp = AWP(gamma=5e-3)
        with awp.perturbed(model, lambda: method.loss(model, prepared).loss):
            method.loss(model, prepared).loss.backward()
        optimizer.step()
    """

    name: ClassVar[str] = "awp"
    gamma: float = 5e-3
    warmup: int = 0

    def __post_init__(self) -> None:
        check_positive("awp", self.gamma)
        check_count("awp_warmup", self.warmup, 0)
        super().__post_init__()

    def select(self, model: nn.Module) -> list[nn.Parameter]:
        return trainable(model, weights_only=True)

    def search(self, model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter],
               originals: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = loss_gradients(model, loss_fn, params)
        return [
            self.gamma * torch.linalg.vector_norm(w) * g / torch.linalg.vector_norm(g).clamp_min(_TINY)
            for w, g in zip(originals, grads)
        ]

