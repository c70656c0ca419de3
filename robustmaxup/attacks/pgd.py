"""Projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
Adversarial Attacks"), L∞ and L2, as a stateless function."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import (
    LOSSES, attack_mode, check_budget, check_norm, check_unit_range, pgd_loop, random_init, work_dtype,
)
from robustmaxup.errors import UserError
from robustmaxup.models.state import check_model_input

LossSpec = str | Callable[[Tensor, Tensor], Tensor]


#: the default step size is ``STEP_RATIO * eps / steps`` (Madry et al.'s 2.5)
STEP_RATIO = 2.5


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    targeted: bool = False,
    loss: LossSpec = "ce",
    delta_init: Tensor | None = None,
    train_mode: bool = False,
    generator: torch.Generator | None = None,
    check_inputs: bool = True,
) -> Tensor:
    """PGD attack: ``steps`` projected gradient-ascent steps on ``loss`` within the ε-ball.

    Each step moves by ``step_size * sign(grad)`` (L∞) or ``step_size * grad/||grad||_2`` (L2),
    then projects onto the ε-ball around ``x`` and onto the [0, 1] box. The model runs in eval
    mode (or train mode with BatchNorm running statistics frozen, if ``train_mode``) with all
    parameters' ``requires_grad`` off and autocast disabled; mode and flags are restored
    afterwards, even if the model raises. The caller's tensors are never modified.

    Args:
        model: classifier taking [0, 1] pixels ``[B, C, H, W]`` to logits ``[B, K]``.
        x: clean inputs ``[B, C, H, W]`` in [0, 1] (checked unless ``check_inputs=False``,
            which saves a host sync where they are in [0, 1] by construction).
        y: labels ``[B]`` (the target classes when ``targeted``), or whatever a callable
            ``loss`` expects as second argument (e.g. soft labels ``[B, K]``).
        eps: radius of the ball (pixel scale).
        norm: ``"Linf"`` or ``"L2"``.
        steps: number of gradient steps.
        step_size: step length; default ``2.5 * eps / steps``.
        random_start: start uniformly in the L∞ box / L2 ball (else at ``x``).
        targeted: minimise the loss towards ``y`` instead of maximising it.
        loss: ``"ce"``, ``"margin"`` (Carlini-Wagner ``max_{j≠y} z_j - z_y``), or a callable
            ``(logits [B,K], y) -> [B]`` per-example loss to maximise.
        delta_init: starting perturbation ``[B, C, H, W]`` (e.g. TRADES' ``0.001*N(0,1)``);
            overrides ``random_start``.
        train_mode: run the model in train mode (batch statistics) during the attack.
        generator: source of the random start (on ``x``'s device); global RNG if None.

    Returns:
        Adversarial inputs ``[B, C, H, W]``, same device and dtype as ``x``, within the ε-ball
        around ``x`` and in [0, 1].

    Example::

        x_adv = pgd(model, x, y, eps=8/255, steps=10)                 # L∞, CE
        x_adv = pgd(model, x, y, eps=0.5, norm="L2", loss="margin")
    """
    check_norm(norm)
    step_size = check_budget(eps, steps, step_size, default_ratio=STEP_RATIO)
    _check_shapes(x, y, delta_init)
    if check_inputs:
        check_unit_range(x)
        check_model_input(model, x, also=work_dtype(x))
    loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
    sign = -1.0 if targeted else 1.0
    x_work = x.detach().to(work_dtype(x))
    if delta_init is not None:
        delta = delta_init.detach().to(x_work.dtype)
    elif random_start:
        delta = random_init(x_work, eps, norm, generator)
    else:
        delta = torch.zeros_like(x_work)

    def objective(x_adv: Tensor) -> Tensor:
        logits = model(x_adv.to(x.dtype))
        return sign * loss_fn(logits.to(work_dtype(logits)), y)

    with attack_mode(model, train_mode, x.device.type):
        x_adv = pgd_loop(objective, x_work, delta, eps=eps, norm=norm, steps=steps,
                         step_size=step_size)
    return x_adv.to(x.dtype)


def _check_shapes(x: Tensor, y: Tensor, delta_init: Tensor | None) -> None:
    if x.dim() < 2 or y.shape[:1] != x.shape[:1]:
        raise UserError(f"x and y must hold the same number of examples, got shapes {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    if delta_init is not None and delta_init.shape != x.shape:
        raise UserError(f"delta_init must have x's shape {tuple(x.shape)}, got {tuple(delta_init.shape)}")
