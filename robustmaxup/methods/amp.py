"""Adversarial Model Perturbation (Zheng, Zhang & Mao 2021, "Regularizing Neural Networks via
Adversarial Model Perturbation", CVPR): minimise the "AMP loss" ``max_{||v|| <= eps} L(w + v)``.

The inner maximisation takes ``steps`` gradient-ascent steps from ``v = 0``:
``v <- v + step_size * ∇L(w + v)``, then projects ``v`` onto the L2 ball of radius ``eps``; the
step's gradient is taken at ``w + v`` and applied to ``w``. All trainable parameters move
(weights, biases and BatchNorm affine parameters alike, as in the paper).

The ball is the paper's: one L2 ball over the whole parameter vector. The authors' public code
clips each parameter tensor to norm ``eps`` separately (a larger set: the global norm can reach
``eps * sqrt(#tensors)``); ``per_tensor=True`` reproduces that.

Defaults (the paper's CIFAR-10 setting and the code's defaults): ``eps = 0.5``, ``steps = 1``
(N, inner iterations), ``step_size = 1.0`` (ζ, inner learning rate), ``per_tensor = False``,
``warmup = 0``. CLI: ``--amp 0.5 [--amp-steps 1 --amp-step-size 1]`` wraps any ``--method``.
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

        amp = AMP(eps=0.5)
        with amp.perturbed(model, lambda: method.loss(model, prepared).loss):
            method.loss(model, prepared).loss.backward()
        optimizer.step()
    """

    name: ClassVar[str] = "amp"
    eps: float = 0.5
    steps: int = 1
    step_size: float = 1.0
    per_tensor: bool = False
    warmup: int = 0

    def __post_init__(self) -> None:
        check_positive("amp", self.eps)
        check_positive("amp_step_size", self.step_size)
        check_count("amp_steps", self.steps, 1)
        check_count("amp_warmup", self.warmup, 0)
        super().__post_init__()

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

