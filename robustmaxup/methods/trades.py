"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan 2019, "Theoretically Principled Trade-off
between Robustness and Accuracy", ICML)::

    loss = CE(f(x), y) + trades_beta · KL(softmax(f(x)) || softmax(f(x_adv)))     (batch mean)

with ``x_adv`` maximising that KL over the ε-ball: PGD (:func:`robustmaxup.attacks.pgd` with a
callable loss) from ``x + 0.001·N(0, I)``, model in eval mode, the clean prediction held fixed
during the attack. Clean and adversarial batches go through the model in two forwards (as in the
authors' code). Validation metric: PGD-``eval_steps`` (CE) robust accuracy at the training ε.

Defaults: ``trades_beta = 6`` (the paper's CIFAR-10 value, 1/λ; yaodongyu/TRADES
train_trades_cifar10.py:36), L∞, 10 steps, ε = 8/255, step 2/255 (the reference script uses
ε = 0.031, step 0.007, train_trades_cifar10.py:30-35: the ``trades`` recipe sets those);
``norm = "L2"``: ε = 128/255, step 15/255. ``attack_eps = 0``/``attack_step_size = 0`` mean "the
norm's default". The attack runs in eval mode, as the reference's (trades.py:28).

Deviations, small: the start ``x + 0.001·N(0, I)`` is clipped to [0, 1] before the first
gradient (the reference clips only after the first step, trades.py:31-36). The L2 attack is
robustmaxup's shared L2 PGD (project onto the ball, then clip; no recipe uses it), not the
reference's L2 branch (trades.py:47-69: step 2ε/steps on a ``delta`` optimised by SGD, clip
before renorming, a random direction where the gradient is zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.attacks import pgd
from robustmaxup.methods.base import LossOutput, at_least_fp32, check_positive
from robustmaxup.methods.families import AdversarialMethod
from robustmaxup.methods.registry import register_method
from robustmaxup.models.state import model_state

START_SCALE = 0.001


def kl_attack_loss(logits: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """Per-example ``KL(p_clean || softmax(logits))`` ``[B]``: the attack loss, with the clean
    prediction ``p_clean`` ``[B, K]`` passed where PGD passes labels."""
    return (torch.xlogy(p_clean, p_clean) - p_clean * F.log_softmax(at_least_fp32(logits), dim=1)).sum(1)


def trades_kl(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(softmax(logits_clean) || softmax(logits_adv))`` (scalar)."""
    log_p = F.log_softmax(at_least_fp32(logits_clean), dim=1)
    log_q = F.log_softmax(at_least_fp32(logits_adv), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()


@register_method
@dataclass
class TRADES(AdversarialMethod):
    """TRADES training (see module docstring).

    Example::

        method = TRADES(trades_beta=6.0)
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "trades"
    trades_beta: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("trades_beta", self.trades_beta, allow_zero=True)

    def prepare_cost(self) -> float:
        return 1.0 + 3.0 * self.attack_steps    # the clean prediction, then the attack steps

    def loss_cost(self) -> float:
        return 6.0                              # clean and adversarial forwards, with backward

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        with torch.no_grad(), model_state(model, train=False):
            p_clean = F.softmax(at_least_fp32(model(x)), dim=1)
        start = START_SCALE * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = pgd(model, x, p_clean, eps=self.attack_eps, norm=self.norm,
                    steps=int(self.attack_steps), step_size=self.attack_step_size,
                    random_start=False, loss=kl_attack_loss, delta_init=start, check_inputs=False)
        return x, x_adv, y

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, x_adv, y = prepared
        logits_clean = model(x)
        logits_adv = model(x_adv)
        ce = F.cross_entropy(logits_clean, y)
        kl = trades_kl(logits_clean, logits_adv)
        return LossOutput(ce + self.trades_beta * kl, logits_adv.detach(), y)
