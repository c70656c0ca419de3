"""The soft smoothed classifier ``E_δ softmax(f(x+δ))``, δ ~ N(0, σ²I), as attacks see it."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustmaxup.errors import UserError

_LOG_FLOOR = 1e-20


def soft_smoothed_log_probs(model: nn.Module, x: Tensor, noise: Tensor) -> Tensor:
    """``log mean_i softmax(model(x + noise[i]))``, the soft smoothed classifier's log-probabilities.

    Args:
        model: classifier ``[N, C, H, W] -> [N, K]`` logits.
        x: inputs ``[B, C, H, W]``.
        noise: noise ``[m, B, C, H, W]`` (already scaled by σ); all m copies go in one forward.

    Returns:
        Log-probabilities ``[B, K]`` (floored at ``log 1e-20`` to stay finite).
    """
    m, b = noise.shape[:2]
    logits = model((x.unsqueeze(0) + noise).reshape(m * b, *x.shape[1:]))
    probs = logits.float().softmax(-1).view(m, b, -1).mean(0)
    return probs.clamp_min(_LOG_FLOOR).log()


class SoftSmoothed(nn.Module):
    """A randomized, differentiable smoothed classifier for attacks (AutoAttack ``rand``/EOT).

    ``forward(x)`` draws ``m`` fresh Gaussian noise samples per input and returns the log of the
    mean softmax, ``[B, K]``; argmax gives the soft smoothed prediction. Attacks see a randomized
    model, so evaluate ``x_adv`` several times (see :func:`robustmaxup.attacks.autoattack`).

    Args:
        model: base classifier on [0, 1] pixels.
        sigma: noise standard deviation (pixel scale).
        m: noise samples per input and forward.
        generator: noise source on the inputs' device (global RNG if None).

    Example::

        smoothed = SoftSmoothed(model, sigma=0.25, m=32)
        log_probs = smoothed(x)          # [B, K]
    """

    def __init__(self, model: nn.Module, sigma: float, m: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not sigma > 0:
            raise UserError(f"sigma must be positive, got {sigma}")
        if int(m) != m or m < 1:
            raise UserError(f"m must be a positive integer, got {m}")
        self.model = model
        self.sigma = float(sigma)
        self.m = int(m)
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        noise = torch.randn((self.m, *x.shape), generator=self.generator, device=x.device,
                            dtype=x.dtype) * self.sigma
        return soft_smoothed_log_probs(self.model, x, noise)
