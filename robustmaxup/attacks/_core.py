"""The one PGD core of the package: random starts, ascent steps, projections and the loop.

Every projected-gradient attack in robustmaxup (``pgd``, ``smooth_pgd`` and the training methods
built on them) runs :func:`pgd_loop`; only the objective differs. Points ``x_adv`` and
perturbations ``delta`` have the input's shape ``[B, ...]``; norms are taken per example over all
non-batch dimensions. The loop keeps the point ``x_adv`` (not ``delta``) as its state, so the
result lies exactly in [0, 1].
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from robustmaxup.errors import UserError, did_you_mean
from robustmaxup.runtime.checks import check_pixels
from robustmaxup.models.state import frozen_bn_stats, model_state
from robustmaxup.registry import Registry

NORMS = ("Linf", "L2")
_TINY = 1e-12

#: per-example loss functions ``(logits [B,K], y [B]) -> [B]`` that an attack MAXIMISES.
LOSSES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("attack loss")


@LOSSES.register("ce")
def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``[B]``; ``y`` holds class indices ``[B]``."""
    return nn.functional.cross_entropy(logits, y, reduction="none")


@LOSSES.register("margin")
def margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` per example ``[B]`` (> 0: misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return other - true


def check_unit_range(x: Tensor) -> None:
    """UserError unless every entry of ``x`` lies in [0, 1] (attacks work in pixel space); one
    host sync, so the training methods, whose loader pixels are in [0, 1] by construction, skip it."""
    check_pixels(x, "inputs")


def work_dtype(x: Tensor) -> torch.dtype:
    """Attack arithmetic in fp32 at least (bf16/fp16 input gradients weaken attacks)."""
    return torch.promote_types(x.dtype, torch.float32)


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise UserError(f"unknown norm {norm!r}; choose from {', '.join(NORMS)}{did_you_mean(norm, NORMS)}")
    return norm


def check_budget(eps: float, steps: int, step_size: float | None, default_ratio: float) -> float:
    """Validate ``eps``/``steps`` and return the step size (default ``default_ratio*eps/steps``)."""
    if not eps > 0:
        raise UserError(f"eps must be positive, got {eps}")
    if int(steps) != steps or steps < 1:
        raise UserError(f"steps must be a positive integer, got {steps}")
    if step_size is None:
        return default_ratio * eps / steps
    if not step_size > 0:
        raise UserError(f"step_size must be positive, got {step_size}")
    return float(step_size)


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped ``[B, 1, ..., 1]`` for broadcasting."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def random_init(x: Tensor, eps: float, norm: str, generator: torch.Generator | None) -> Tensor:
    """A random start ``delta`` shaped like ``x``: uniform in the L∞ box, or uniform in the L2
    ball (Gaussian direction, radius ``eps * U^(1/d)``)."""
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _per_example_norm(direction).clamp_min(_TINY)
    d = x[0].numel()
    u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator,
                   device=x.device, dtype=x.dtype)
    return direction * eps * u.pow(1.0 / d)


def ascent_step(x_adv: Tensor, grad: Tensor, step_size: float, norm: str) -> Tensor:
    """One step up the gradient: ``sign(grad)`` for L∞, ``grad / ||grad||_2`` for L2 (a zero
    gradient gives a zero step)."""
    if norm == "Linf":
        return x_adv + step_size * grad.sign()
    return x_adv + step_size * grad / _per_example_norm(grad).clamp_min(_TINY)


def project_ball(delta: Tensor, eps: float, norm: str) -> Tensor:
    """The perturbation ``delta`` ``[B, ...]`` projected onto the ε-ball of ``norm``."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_example_norm(delta).clamp_min(_TINY)).clamp(max=1.0)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str, *, box_first: bool = False) -> Tensor:
    """Project the point ``x_adv`` onto the ε-ball around ``x``, then clip it to [0, 1].

    Clipping to the box only moves each coordinate towards ``x`` (which lies in [0, 1]), so the
    result is in both sets: exactly in [0, 1], and in the ball up to one rounding of ``x + δ``.

    ``box_first=True`` applies the two in the other order, as SmoothAdv's reference does
    (Hadisalman/smoothing-adversarial code/attacks.py:109-112, 175-178): clip to [0, 1], then
    shrink the perturbation onto the ball. Shrinking towards ``x`` keeps the point in the box, so
    this result is in both sets too, but when both constraints bind it is a different point
    (usually on the sphere, where ball-then-box lands inside it). A last clip removes rounding.
    """
    if box_first:
        return (x + project_ball(x_adv.clamp(0.0, 1.0) - x, eps, norm)).clamp(0.0, 1.0)
    return (x + project_ball(x_adv - x, eps, norm)).clamp(0.0, 1.0)


@contextlib.contextmanager
def attack_mode(model: nn.Module, train_mode: bool, device_type: str) -> Iterator[None]:
    """Model in eval (or train with frozen BatchNorm statistics) mode, parameters without
    gradients, autocast off; everything restored on exit, even on error."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(model_state(model, train=train_mode, requires_grad=False))
        if train_mode:
            stack.enter_context(frozen_bn_stats(model))
        stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        stack.enter_context(torch.enable_grad())
        yield


def pgd_loop(objective: Callable[[Tensor], Tensor], x: Tensor, delta: Tensor, *, eps: float,
             norm: str, steps: int, step_size: float, box_first: bool = False) -> Tensor:
    """Maximise ``objective(x + delta).sum()`` over the ε-ball ∩ [0,1] box by projected steps.

    Args:
        objective: maps adversarial inputs ``[B, ...]`` to per-example losses ``[B]`` to maximise.
        x: clean inputs ``[B, ...]`` in [0, 1] (not modified).
        delta: starting perturbation ``[B, ...]`` (projected before the first step).
        eps, norm, steps, step_size: the budget (``norm`` in ``"Linf"``, ``"L2"``).
        box_first: the order of the two projections after each step (see :func:`project`).

    Returns:
        The detached adversarial inputs ``[B, ...]``.

    Gradients are taken with ``torch.autograd.grad`` w.r.t. the input only; no host
    synchronisation happens inside the loop.
    """
    x = x.detach()
    x_adv = project(x + delta.detach(), x, eps, norm, box_first=box_first)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(x_adv).sum(), x_adv)
        x_adv = project(ascent_step(x_adv.detach(), grad, step_size, norm), x, eps, norm,
                        box_first=box_first)
    return x_adv.detach()
