"""SmoothMix (Jeong, Park, Kim, Lee, Kim & Shin 2021, "SmoothMix: Training Confidence-calibrated
Smoothed Classifiers for Certified Robustness", NeurIPS).

Each step draws ``copies`` noise vectors δ_1..δ_m per example and runs ``attack_steps``
normalised L2 gradient steps of length ``attack_step_size`` (α) from ``x`` on the soft smoothed
classifier's cross-entropy ``-log mean_i softmax(f(x' + δ_i))_y`` (the SmoothAdv objective,
:func:`robustmaxup.attacks.smooth_pgd`, same noise, model in eval mode, pixels kept in [0, 1]).
The paper puts no norm bound on this adversary (``smoothmix_max_norm = 0``; the code's
``--maxnorm None``, code/train.py:66); ``smoothmix_max_norm > 0`` projects
onto that L2 ball around ``x`` (each step when ``mix_step = 0``; with ``mix_step > 0`` the steps
after the mix step are projected around ``x_s`` and the end point once more around ``x``).

``mix_step`` picks the "clean" end of the mixup: 0 is ``x`` itself; s ≥ 1 is the adversary after
s steps (the paper's "one-step adversary" variant is ``mix_step = 1``), held within the L2 ball
of radius ``warm · s · α`` around ``x``. With ``x_s`` that point and ``x_T`` the final adversary,
``λ ~ U[0, 1/2]`` per example::

    x_mix = (1 - λ) x_s + λ x_T,    y_mix = (1 - λ) p̄(x_s) + λ · (1/K) 1

where ``p̄(x_s) = mean_i softmax(f(x_s + δ_i))`` is the smoothed prediction at the clean end (the
calibration target moves from it towards the uniform distribution). The loss is::

    mean_i CE(f(x_s + δ_i), y)  +  smoothmix_eta · warm · mean_i [ 1{argmax p̄(x_s) = y} · KL(y_mix || softmax(f(x_mix + δ_i))) ]

(the Gaussian base loss plus the mixup loss, with the same noise δ_i throughout; gradients flow
into ``p̄(x_s)`` as in the authors' code). Every "clean" term is taken at ``x_s``, which is ``x``
for the default ``mix_step = 0``: the reference replaces its inputs by the attacker's start point
(``inputs, inputs_adv = attacker.attack(...)``, code/train.py:167) before the cross-entropy,
p̄, the mixup target and the correctness mask (code/train.py:171-187). ``warm = min(1, (epoch + 1) / warmup)`` ramps the mixup
loss and the one-step radius up over the first ``warmup`` epochs (code/train.py:89-90).

Steps per loader batch (:meth:`SmoothMix.reference_chunks`): the reference splits each loader
batch of B examples into m chunks of B/m (``_chunk_minibatch``, code/train.py:114-118, 158) and
takes one SGD step per chunk on its B/m examples × m noise copies (code/train.py:159-198);
``step_structure="reference"`` does the same, ``"joint"`` one step on the whole batch.

Defaults (the authors' CIFAR-10 σ = 0.25 command, jh-jeong/smoothmix EXPERIMENTS.MD:77-78):
``copies = 2``, ``attack_steps = 4`` (T), ``attack_step_size = 0.5`` (α; 1.0 for σ = 0.5 and 2.0
for σ = 1.0, EXPERIMENTS.MD:79-82), ``smoothmix_eta = 5.0``, ``mix_step = 0``, ``warmup = 10``
(code/train.py:67), ``smoothmix_max_norm = 0`` (unbounded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.attacks import smooth_pgd
from robustmaxup.methods.augment import draw_noise
from robustmaxup.methods.base import LossOutput, at_least_fp32, check_count, check_positive
from robustmaxup.methods.families import SmoothingMethod, warmup_fraction
from robustmaxup.methods.registry import register_method
from robustmaxup.runtime.checks import FieldError


def clip_l2(x_new: torch.Tensor, x: torch.Tensor, radius: float) -> torch.Tensor:
    """``x_new`` moved into the L2 ball of ``radius`` around ``x`` (per example); radius 0 gives ``x``."""
    delta = (x_new - x).flatten(1)
    norm = delta.norm(dim=1, keepdim=True)
    scale = (radius / norm.clamp_min(1e-12)).clamp(max=1.0)
    return x + (delta * scale).view_as(x)


@register_method
@dataclass
class SmoothMix(SmoothingMethod):
    """SmoothMix training (see module docstring).

    Example::

        method = SmoothMix(sigma=0.25, copies=2, attack_steps=4, attack_step_size=0.5, smoothmix_eta=5.0)
        method.setup(num_classes=10); method.on_epoch_start(0, 150)
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "smoothmix"
    smoothmix_eta: float = 5.0
    mix_step: int = 0
    attack_steps: int = 4
    attack_step_size: float = 0.5
    smoothmix_max_norm: float = field(default=0.0, metadata={"help": "0: no norm bound (the paper)"})
    copies: int = 2
    warmup: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("smoothmix_eta", self.smoothmix_eta, allow_zero=True)
        check_count("attack_steps", self.attack_steps, 1)
        check_positive("attack_step_size", self.attack_step_size)
        check_positive("smoothmix_max_norm", self.smoothmix_max_norm, allow_zero=True)
        check_count("copies", self.copies, 1)
        check_count("warmup", self.warmup, 0)
        check_count("mix_step", self.mix_step, 0)
        if self.mix_step >= self.attack_steps:
            raise FieldError("mix_step", f"must be smaller than the number of attack steps "
                                         f"({self.attack_steps}), got {self.mix_step}")
        self._warm = 1.0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._warm = warmup_fraction(epoch, int(self.warmup))

    def reference_chunks(self) -> int:
        """m: one SGD step per chunk of B/m examples (see module docstring)."""
        return int(self.copies)

    def prepare_cost(self) -> float:
        return 3.0 * self.copies * self.attack_steps

    def loss_cost(self) -> float:
        return 6.0 * self.copies              # the clean and the mixed point's m copies

    def _adversary(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor,
                   steps: int) -> torch.Tensor:
        """``steps`` SmoothMix steps from ``x`` (unbounded unless ``smoothmix_max_norm`` > 0)."""
        alpha = self.attack_step_size
        eps = self.smoothmix_max_norm or steps * alpha   # a walk of `steps` steps of length α stays inside
        return smooth_pgd(model, x, y, eps=eps, sigma=self.sigma, m=int(self.copies), steps=steps,
                          step_size=alpha, noise=noise, check_inputs=False)

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        m, s, steps = int(self.copies), int(self.mix_step), int(self.attack_steps)
        noise = draw_noise(x, m, self.sigma, generator)
        x_start = x
        if s > 0:
            x_start = self._adversary(model, x, y, noise, s)
        x_end = self._adversary(model, x_start, y, noise, steps - s)
        if self.smoothmix_max_norm > 0:
            x_end = clip_l2(x_end, x, self.smoothmix_max_norm)
        if s > 0:
            radius = self._warm * s * self.attack_step_size
            if self.smoothmix_max_norm > 0:
                radius = min(radius, self.smoothmix_max_norm)
            x_start = clip_l2(x_start, x, radius)
        lam = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) / 2
        x_mix = (1 - lam).view(-1, *[1] * (x.dim() - 1)) * x_start + lam.view(-1, *[1] * (x.dim() - 1)) * x_end
        return noise, x_start, x_mix, lam, y     # x_start: the clean end x_s (x when mix_step = 0)

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        noise, x_start, x_mix, lam, y = prepared
        m, b = noise.shape[0], y.shape[0]
        logits_clean = model((x_start.unsqueeze(0) + noise).flatten(0, 1))
        ce = F.cross_entropy(logits_clean, y.repeat(m))
        smoothed = F.softmax(at_least_fp32(logits_clean), dim=-1).view(m, b, -1).mean(0)     # p̄(x_s) [B, K]
        uniform = torch.full_like(smoothed, 1.0 / smoothed.shape[-1])
        lam = lam.to(smoothed.dtype).unsqueeze(1)
        target = (1 - lam) * smoothed + lam * uniform                                 # [B, K]
        correct = (smoothed.argmax(1) == y).to(smoothed.dtype)                         # [B]
        logits_mix = model((x_mix.unsqueeze(0) + noise).flatten(0, 1))
        log_q = F.log_softmax(at_least_fp32(logits_mix), dim=-1).view(m, b, -1)
        kl = (torch.xlogy(target, target).unsqueeze(0) - target.unsqueeze(0) * log_q).sum(-1)   # [m, B]
        mix = (correct.unsqueeze(0) * kl).mean()
        loss = ce + self.smoothmix_eta * self._warm * mix
        return LossOutput(loss, logits_clean.detach(), y.repeat(m))
