"""MACER (Zhai, Dan, He, Zhang, Gong, Ravikumar, Hsieh & Wang 2020, "MACER: Attack-free and
Scalable Robust Training via Maximizing Certified Radius", ICLR).

With ``copies`` noisy copies of each example and logits ``z_i = f(x + δ_i)``:

* classification loss: cross-entropy of the soft smoothed classifier,
  ``-log(mean_i softmax(z_i)_y + 1e-10)``;
* robustness loss, on the examples the smoothed classifier with inverse temperature
  ``macer_beta`` (``p̂ = mean_i softmax(macer_beta * z_i)``) gets right: a hinge on the
  certified-radius surrogate ``σ/2 · (Φ⁻¹(p̂_y) - Φ⁻¹(p̂_2nd))``, namely
  ``σ/2 · max(0, macer_gamma - (Φ⁻¹(p̂_y) - Φ⁻¹(p̂_2nd)))``. As in the paper's code, examples
  whose gap is not finite (p̂_y = 1 in float precision) or exceeds ``macer_gamma`` contribute
  nothing.

``loss = mean_batch(classification) + lbd * sum_batch(robustness) / B``.

Steps per loader batch: unlike SmoothAdv, SmoothMix and consistency, MACER's reference code does
not chunk: each loader batch of B examples is replicated k times and takes ONE SGD step on all
B·k noisy inputs (RuntianZ/macer macer.py:24-68). So :meth:`MACER.reference_chunks` is 1 and
``step_structure`` makes no difference for MACER.

Defaults (the authors' CIFAR-10 σ = 0.25 setting, RuntianZ/macer main.py:41-54): ``copies = 16``
(k), ``lbd = 12`` (λ; the paper uses 4 for σ = 1.0), ``macer_gamma = 8`` (hinge),
``macer_beta = 16`` (inverse temperature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.methods.augment import draw_noise
from robustmaxup.methods.base import LossOutput, at_least_fp32, check_count, check_positive
from robustmaxup.methods.families import SmoothingMethod
from robustmaxup.methods.registry import register_method


def radius_hinge(logits: torch.Tensor, y: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """MACER's per-example hinge ``max(0, gamma - (Φ⁻¹(p̂_y) - Φ⁻¹(p̂_2nd)))`` ``[B]`` for logits
    ``[m, B, K]`` (zero where the β-smoothed prediction is wrong or the gap is not finite or
    exceeds ``gamma``; the radius itself is ``σ/2`` times the gap)."""
    probs = F.softmax(beta * at_least_fp32(logits), dim=-1).mean(0)       # [B, K]
    top, idx = probs.topk(2, dim=-1)
    with torch.no_grad():
        gap = torch.special.ndtri(top[:, 0]) - torch.special.ndtri(top[:, 1])
        active = (idx[:, 0] == y) & torch.isfinite(gap) & (gap <= gamma)
    hinge = torch.zeros_like(top[:, 0])
    sel = top[active]
    hinge[active] = gamma - (torch.special.ndtri(sel[:, 0]) - torch.special.ndtri(sel[:, 1]))
    return hinge


@register_method
@dataclass
class MACER(SmoothingMethod):
    """MACER training (see module docstring).

    Example::

        method = MACER(sigma=0.25, copies=16, lbd=12.0, macer_gamma=8.0, macer_beta=16.0)
        method.setup(num_classes=10)
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "macer"
    copies: int = 16
    lbd: float = 12.0
    macer_gamma: float = 8.0
    macer_beta: float = 16.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("copies", self.copies, 2)
        check_positive("lbd", self.lbd, allow_zero=True)
        check_positive("macer_gamma", self.macer_gamma)
        check_positive("macer_beta", self.macer_beta)

    def reference_chunks(self) -> int:
        """1: MACER's reference takes one step per loader batch (see module docstring)."""
        return 1

    def loss_cost(self) -> float:
        return 3.0 * self.copies

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        noise = draw_noise(x, int(self.copies), self.sigma, generator)
        return (x.unsqueeze(0) + noise).flatten(0, 1), y          # copy-major [m*B, ...]

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, y = prepared
        m, b = int(self.copies), y.shape[0]
        logits = model(x).view(m, b, -1)
        smoothed = F.softmax(at_least_fp32(logits), dim=-1).mean(0)                  # [B, K]
        classification = F.nll_loss(torch.log(smoothed + 1e-10), y)
        hinge = radius_hinge(logits, y, beta=self.macer_beta, gamma=self.macer_gamma)
        robustness = self.sigma / 2 * hinge.sum() / b
        loss = classification + self.lbd * robustness
        return LossOutput(loss, smoothed.detach(), y)
