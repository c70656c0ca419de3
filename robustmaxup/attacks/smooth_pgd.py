"""SmoothAdv's attack on the soft smoothed classifier (Salman et al. 2019, "Provably Robust Deep
Learning via Adversarially Trained Smoothed Classifiers"), L2, on the shared PGD core."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import (
    attack_mode, check_budget, check_unit_range, pgd_loop, random_init, work_dtype,
)
from robustmaxup.attacks.smoothed import soft_smoothed_log_probs
from robustmaxup.errors import UserError
from robustmaxup.models.state import check_model_input


def smooth_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    sigma: float,
    m: int,
    steps: int,
    step_size: float | None = None,
    noise: Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    train_mode: bool = False,
    box_first: bool = False,
    check_inputs: bool = True,
) -> Tensor:
    """SmoothAdv-style PGD-L2: maximise the cross-entropy of the soft smoothed classifier
    ``log mean_i softmax(model(x' + noise_i))`` over ``||x' - x||_2 <= eps``, ``x'`` in [0, 1].

    The noise is drawn once and kept fixed over the steps (as in SmoothAdv, which then trains
    on ``x_adv + noise`` with the SAME noise: pass ``noise`` to reuse it). Steps, projections
    and the loop are those of :func:`robustmaxup.attacks.pgd` (shared core). One difference
    from SmoothAdv's code: a zero gradient (a saturated softmax, or the 1e-20 floor of the log
    binding) gives a zero step here, where SmoothAdv steps in a random direction
    (code/attacks.py:170-171).

    Args:
        model: base classifier on [0, 1] pixels, ``[N, C, H, W] -> [N, K]``.
        x: clean inputs ``[B, C, H, W]`` in [0, 1] (checked unless ``check_inputs=False``,
            which saves a host sync where they are in [0, 1] by construction).
        y: labels ``[B]``.
        eps: L2 radius.
        sigma: noise standard deviation (used only when ``noise`` is None).
        m: noise samples per input (all ``m*B`` copies go through one forward).
        steps: number of gradient steps.
        step_size: step length; default ``2 * eps / steps`` (SmoothAdv's reference code).
        noise: ``[m, B, C, H, W]`` already-scaled noise to use; drawn as ``sigma * N(0, I)``
            from ``generator`` if None.
        random_start: start uniformly in the L2 ball (SmoothAdv starts at ``x``).
        generator: randomness source on ``x``'s device (global RNG if None).
        train_mode: run the model in train mode (BatchNorm statistics frozen).
        box_first: after each step clip to [0, 1] first, then shrink onto the ball (SmoothAdv's
            reference order, code/attacks.py:175-178); default: ball, then box.

    Returns:
        ``x_adv`` ``[B, C, H, W]``, same device/dtype as ``x`` (clean of noise).

    Example::

        noise = torch.randn(4, *x.shape, generator=g) * 0.25
        x_adv = smooth_pgd(model, x, y, eps=0.5, sigma=0.25, m=4, steps=2, noise=noise)
        loss = F.cross_entropy(model((x_adv + noise).flatten(0, 1)), y.repeat(4))
    """
    step_size = check_budget(eps, steps, step_size, default_ratio=2.0)
    if check_inputs:
        check_unit_range(x)
        check_model_input(model, x, also=work_dtype(x))
    if int(m) != m or m < 1:
        raise UserError(f"m must be a positive integer, got {m}")
    if noise is None:
        if not sigma > 0:
            raise UserError(f"sigma must be positive, got {sigma}")
        noise = torch.randn((int(m), *x.shape), generator=generator, device=x.device,
                            dtype=x.dtype) * sigma
    elif noise.shape != (m, *x.shape):
        raise UserError(f"noise must have shape {(m, *x.shape)}, got {tuple(noise.shape)}")
    noise = noise.detach()
    x_work = x.detach().to(work_dtype(x))
    delta = random_init(x_work, eps, "L2", generator) if random_start else torch.zeros_like(x_work)

    def objective(x_adv: Tensor) -> Tensor:
        log_probs = soft_smoothed_log_probs(model, x_adv.to(x.dtype), noise)
        return nn.functional.nll_loss(log_probs, y, reduction="none")

    with attack_mode(model, train_mode, x.device.type):
        x_adv = pgd_loop(objective, x_work, delta, eps=eps, norm="L2", steps=steps,
                         step_size=step_size, box_first=box_first)
    return x_adv.to(x.dtype)
