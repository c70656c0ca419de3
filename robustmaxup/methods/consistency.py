"""Consistency regularization (Jeong & Shin 2020, "Consistency Regularization for Certified
Robustness of Smoothed Classifiers", NeurIPS), on Gaussian augmentation.

With ``m`` noisy copies ``x + δ_i`` of each example, predictions ``p_i = softmax(f(x + δ_i))``
and their mean ``p̄``, the loss is::

    mean_i CE(f(x + δ_i), y)  +  lbd * mean_i KL(p̄ || p_i)  +  consistency_eta * H(p̄)

(averaged over the batch; gradients flow through ``p̄`` as in the authors' code).

Steps per loader batch (:meth:`Consistency.reference_chunks`): the reference splits each loader
batch of B examples into m chunks of B/m (``_chunk_minibatch``, jh-jeong/smoothing-consistency
code/train_consistency.py:115-119, 140) and takes one SGD step per chunk on its B/m examples × m
noise copies (code/train_consistency.py:141-176); ``step_structure="reference"`` does the same.

Defaults: σ = 0.25, ``copies = 2``, ``lbd = 10``, ``consistency_eta = 0.5`` (the entropy weight,
code/train_consistency.py:59-60). The paper reports Gaussian + consistency with λ ∈ {5, 10, 20}
(larger λ trades clean accuracy for robustness); its released CIFAR-10 σ = 0.25 results include
λ = 10 and 20 (the ``consistency`` recipe takes 20, the one with the larger ACR).
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


def consistency_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For logits ``[m, B, K]`` of m noisy copies: ``(mean_i KL(p̄ || p_i), H(p̄))``, each ``[B]``."""
    log_p = F.log_softmax(at_least_fp32(logits), dim=-1)          # [m, B, K]
    mean_p = log_p.exp().mean(0)                           # [B, K]
    neg_entropy = torch.xlogy(mean_p, mean_p).sum(-1)      # sum p̄ log p̄  [B]
    kl = neg_entropy - (mean_p.unsqueeze(0) * log_p).sum(-1).mean(0)
    return kl, -neg_entropy


@register_method
@dataclass
class Consistency(SmoothingMethod):
    """Gaussian augmentation + consistency regularization (see module docstring).

    Example::

        method = Consistency(sigma=0.25, copies=2, lbd=10.0, consistency_eta=0.5)
        method.setup(num_classes=10)
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "consistency"
    copies: int = 2
    lbd: float = 10.0
    consistency_eta: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_count("copies", self.copies, 2)
        check_positive("lbd", self.lbd, allow_zero=True)
        check_positive("consistency_eta", self.consistency_eta, allow_zero=True)

    def reference_chunks(self) -> int:
        """m: one SGD step per chunk of B/m examples (see module docstring)."""
        return int(self.copies)

    def loss_cost(self) -> float:
        return 3.0 * self.copies

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        noise = draw_noise(x, int(self.copies), self.sigma, generator)
        return (x.unsqueeze(0) + noise).flatten(0, 1), y          # copy-major [m*B, ...]

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, y = prepared
        m = int(self.copies)
        logits = model(x)
        ce = F.cross_entropy(logits, y.repeat(m))
        kl, entropy = consistency_terms(logits.view(m, y.shape[0], -1))
        loss = ce + (self.lbd * kl + self.consistency_eta * entropy).mean()
        return LossOutput(loss, logits.detach(), y.repeat(m))
