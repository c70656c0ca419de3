"""The soft smoothed classifier ``E_δ softmax(f(x+δ))``, δ ~ N(0, σ²I), as attacks see it."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from robustmaxup.attacks._core import work_dtype
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
    probs = logits.to(work_dtype(logits)).softmax(-1).view(m, b, -1).mean(0)
    return probs.clamp_min(_LOG_FLOOR).log()


class SoftSmoothed(nn.Module):
    """A randomized, differentiable smoothed classifier for attacks (AutoAttack ``rand``/EOT).

    ``forward(x)`` draws ``m`` fresh Gaussian noise samples per input and returns the log of the
    mean softmax, ``[B, K]``; argmax gives the soft smoothed prediction. Attacks see a randomized
    model, so evaluate ``x_adv`` several times (see :func:`robustmaxup.attacks.rescore`).

    Noise comes from ``generator`` (one stream for every row of every call), or, inside
    ``with smoothed.per_example(generators):``, row ``j``'s noise comes from ``generators[j]``
    alone: then what an example sees does not depend on the other examples of its batch.

    Args:
        model: base classifier on [0, 1] pixels.
        sigma: noise standard deviation (pixel scale).
        m: noise samples per input and forward.
        generator: noise source on the inputs' device (global RNG if None).

    Example::

        smoothed = SoftSmoothed(model, sigma=0.25, m=32)
        log_probs = smoothed(x)          # [B, K]
        gens = [torch.Generator().manual_seed(i) for i in range(len(x))]
        with smoothed.per_example(gens):
            log_probs = smoothed(x)      # row j's noise from gens[j]
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
        self._rows: Sequence[torch.Generator] | None = None

    @contextlib.contextmanager
    def per_example(self, generators: Sequence[torch.Generator] | None) -> Iterator[None]:
        """Inside the block every call gets ``len(generators)`` rows and row ``j``'s noise is
        drawn from ``generators[j]`` (``None``: the shared ``generator``, as outside)."""
        saved, self._rows = self._rows, (list(generators) if generators is not None else None)
        try:
            yield
        finally:
            self._rows = saved

    def noise(self, x: Tensor) -> Tensor:
        """Scaled noise ``[m, B, C, H, W]`` for the inputs ``x`` ``[B, C, H, W]``."""
        if self._rows is None:
            return torch.randn((self.m, *x.shape), generator=self.generator, device=x.device,
                               dtype=x.dtype) * self.sigma
        if len(self._rows) != len(x):
            raise ValueError(f"per-example noise for {len(self._rows)} rows, but the call has {len(x)}")
        buf = torch.empty((len(x), self.m, *x.shape[1:]), device=x.device, dtype=x.dtype)
        for j, g in enumerate(self._rows):
            buf[j].normal_(generator=g)
        return buf.transpose(0, 1).mul_(self.sigma)

    def forward(self, x: Tensor) -> Tensor:
        return soft_smoothed_log_probs(self.model, x, self.noise(x))


def per_example_noise(model: nn.Module,
                      generators: Sequence[torch.Generator] | None) -> contextlib.AbstractContextManager:
    """``model.per_example(generators)`` for a model that has it (:class:`SoftSmoothed`), else a
    no-op context (deterministic models draw no noise)."""
    if generators is not None and hasattr(model, "per_example"):
        return model.per_example(generators)
    return contextlib.nullcontext()
