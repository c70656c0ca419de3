"""Adversarial Model Perturbation (Zheng, Zhang & Mao 2021, "Regularizing Neural Networks via
Adversarial Model Perturbation", CVPR): minimise the "AMP loss" ``max_{||v|| <= eps} L(w + v)``.

The inner maximisation takes ``steps`` gradient-ascent steps from ``v = 0``:
``v <- v + step_size * ∇L(w + v)``, then projects ``v`` back into the ball; the step's gradient
is taken at ``w + v``, ``w`` is restored, and the optimiser steps from ``w`` (the reference's
order, hiyouga/AMP-Regularizer amp.py:60-64). All trainable parameters move (weights, biases and
BatchNorm affine parameters alike, amp.py:49-58).

Which ball (``per_tensor``). The authors' code clips each parameter tensor to norm ``eps``
separately (amp.py:54-56): every tensor's ``||v_i|| <= eps``, so the global norm can reach
``eps * sqrt(#tensors)``. That is the default here (``per_tensor = True``). ``per_tensor = False``
is the paper's formula instead: one L2 ball of radius ``eps`` over the whole parameter vector.

Defaults (the code's defaults, main.py:128-130): ``eps = 0.5``, ``steps = 1`` (inner iterations),
``step_size = 1.0`` (inner learning rate), ``per_tensor = True``, ``warmup = 0``. (The reference
training script also clips the gradient norm to 50 inside its closure, main.py:51, 134, so the
clip bounds the inner ascent's gradient too; robustmaxup clips neither. Its two train-mode
closures per step also update BatchNorm running statistics twice; robustmaxup's once.)
CLI: ``--amp-eps 0.5 [--amp-steps 1 --amp-step-size 1 --amp-per-tensor false]`` wraps any
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
    LossFn, PerturbationCore, global_norm, loss_gradients, set_weights, trainable,
)

_TINY = 1e-12


def project_ball(deltas: list[torch.Tensor], eps: float, *, per_tensor: bool) -> list[torch.Tensor]:
    """Scale ``deltas`` into the L2 ball of radius ``eps`` (jointly, or each tensor alone)."""
    if per_tensor:
        return [v * (eps / torch.linalg.vector_norm(v).clamp_min(_TINY)).clamp(max=1.0) for v in deltas]
    if not deltas:
        return deltas
    scale = (eps / global_norm(deltas).clamp_min(_TINY)).clamp(max=1.0)
    return [v * scale.to(v.device, v.dtype) for v in deltas]


@register_perturbation
@dataclass
class AMP(PerturbationCore):
    """Worst-case weight perturbation in an L2 ball of radius ``eps`` (see module docstring).

    Example::

        amp = AMP(eps=0.5)                      # per-tensor clip, as the reference
        with amp.perturbed(model, lambda: method.loss(model, prepared).loss):
            method.loss(model, prepared).loss.backward()
        optimizer.step()
    """

    name: ClassVar[str] = "amp"
    eps: float = 0.5
    steps: int = 1
    step_size: float = 1.0
    per_tensor: bool = True
    warmup: int = 0

    def __post_init__(self) -> None:
        check_positive("amp_eps", self.eps)
        check_positive("amp_step_size", self.step_size)
        check_count("amp_steps", self.steps, 1)
        check_count("amp_warmup", self.warmup, 0)
        super().__post_init__()

    def cost(self, loss_cost: float) -> float:
        return self.steps * loss_cost          # one gradient of the method's loss per inner step

    def select(self, model: nn.Module) -> list[nn.Parameter]:
        return trainable(model, weights_only=False)

    def search(self, model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter],
               originals: list[torch.Tensor]) -> list[torch.Tensor]:
        deltas = [torch.zeros_like(w) for w in originals]
        for step in range(int(self.steps)):
            if step > 0:
                set_weights(params, originals, deltas)
            grads = loss_gradients(model, loss_fn, params)
            deltas = [v + self.step_size * g for v, g in zip(deltas, grads)]
            deltas = project_ball(deltas, self.eps, per_tensor=self.per_tensor)
        return deltas

