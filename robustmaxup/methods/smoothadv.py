"""SmoothAdv (Salman, Yang, Li, Zhang, Zhang, Razenshteyn & Bubeck 2019, "Provably Robust Deep
Learning via Adversarially Trained Smoothed Classifiers", NeurIPS): adversarial training of the
*smoothed* classifier.

Each step draws ``copies`` noise vectors δ_1..δ_m ~ N(0, σ²I) per example, finds ``x_adv`` by
L2-PGD (``attack_steps`` steps of length 2ε/steps, from ``x``, model in eval mode) against the
soft smoothed classifier ``log mean_i softmax(f(x' + δ_i))`` with ``||x' - x||_2 <= ε``
(:func:`robustmaxup.attacks.smooth_pgd`; after each step the point is clipped to [0, 1] and
then shrunk onto the ε-ball, the reference's order, code/attacks.py:176-178), then trains on
``x_adv + δ_i`` with the SAME noise:
cross-entropy averaged over all m noisy copies ("multi-noise", ``multi_noise=True``), or on the
first copy only (``multi_noise=False``).

ε warm-up (as in the authors' code, code/train_pgd.py:177): in epoch ``e`` (0-based) the attack
radius is ``ε · min(1, (e + 1) / warmup)``; ``warmup <= 1`` means the full ε from the start.
Before the engine's first ``on_epoch_start`` call the full ε is used.

Steps per loader batch (:meth:`SmoothAdv.reference_chunks`). The reference code splits each
loader batch of B examples into m chunks of B/m examples (``get_minibatches(batch,
num_noise_vec)``, code/train_pgd.py:202-208, 228), replicates each chunk's examples m times with
fresh noise, and with multi-noise takes one SGD step per chunk (code/train_pgd.py:250-267): m
steps of B noisy inputs per loader batch. ``step_structure="reference"`` (the engine's default)
does exactly that; ``"joint"`` takes one step on all B examples × m copies (B·m inputs, m times
fewer updates). Without multi-noise the reference takes one step per loader batch
(code/train_pgd.py:269-294), and so does robustmaxup.

Defaults — a CIFAR-10 σ = 0.25 configuration from Salman et al.'s sweep (PGD, 2 steps,
ε = 1.0, m = 8, multi-noise), with their 10-epoch warm-up: σ = 0.25, ``attack_steps = 2``,
``smoothadv_eps = 1.0``, ``copies = 8``, ``multi_noise = True``, ``warmup = 10``. (The released
sweep's "ε = 1" models were trained with 255/256, code/train_pgd.py:94; the ``smoothadv`` recipe
uses that value.)

Deviation: where a gradient is exactly zero the reference steps in a random direction
(code/attacks.py:170-171); robustmaxup takes no step for that example (a measure-zero event
for a trained network). The paper sweeps
ε ∈ {0.25, 0.5, 1, 2}, steps ∈ {1, 2, 4, 8, 10}, m ∈ {1, 2, 4, 8}; the ``smoothadv`` recipe sets
the full training set-up.

Cost: every example is attacked under all m noise copies, so an epoch costs about
``copies * (attack_steps + 1)`` Gaussian epochs (:meth:`SmoothAdv.cost`), whichever structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.attacks import smooth_pgd
from robustmaxup.methods.augment import draw_noise
from robustmaxup.methods.base import LossOutput, check_count, check_positive
from robustmaxup.methods.families import SmoothingMethod, warmup_fraction
from robustmaxup.methods.registry import register_method
from robustmaxup.runtime.checks import check_choice


@register_method
@dataclass
class SmoothAdv(SmoothingMethod):
    """SmoothAdv-PGD training (see module docstring).

    Example::

        method = SmoothAdv(sigma=0.25, smoothadv_eps=1.0, attack_steps=2, copies=8)
        method.setup(num_classes=10); method.on_epoch_start(0, 150)
        out = method.loss(model, method.prepare(model, x, y, generator=g))
    """

    name: ClassVar[str] = "smoothadv"
    smoothadv_eps: float = 1.0
    attack_steps: int = 2
    copies: int = 8
    warmup: int = 10
    multi_noise: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("smoothadv_eps", self.smoothadv_eps)
        check_count("attack_steps", self.attack_steps, 1)
        check_count("copies", self.copies, 1)
        check_count("warmup", self.warmup, 0)
        check_choice("multi_noise", self.multi_noise, (True, False))
        self._scale = 1.0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self._scale = warmup_fraction(epoch, int(self.warmup))

    def reference_chunks(self) -> int:
        """m with multi-noise (one SGD step per chunk of B/m examples), else 1 (see module
        docstring)."""
        return int(self.copies) if self.multi_noise else 1

    def prepare_cost(self) -> float:
        return 3.0 * self.copies * self.attack_steps

    def loss_cost(self) -> float:
        return 3.0 * self.copies if self.multi_noise else 3.0

    @property
    def current_eps(self) -> float:
        """The attack radius of the current epoch (after warm-up)."""
        return self.smoothadv_eps * self._scale

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        m = int(self.copies)
        noise = draw_noise(x, m, self.sigma, generator)
        x_adv = smooth_pgd(model, x, y, eps=self.current_eps, sigma=self.sigma, m=m,
                           steps=int(self.attack_steps), noise=noise, generator=generator, box_first=True,
                           check_inputs=False)
        if not self.multi_noise:
            return x_adv + noise[0], y
        return (x_adv.unsqueeze(0) + noise).flatten(0, 1), y.repeat(m)

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, y = prepared
        logits = model(x)
        return LossOutput(F.cross_entropy(logits, y), logits.detach(), y)
