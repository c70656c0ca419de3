"""What an attack evaluation returns, and how ``x_adv`` is classified again.

* :class:`AttackResult`: per-example flags of one batch (clean, robust after every attack,
  re-scorings of ``x_adv``) and the adversarial inputs.
* :func:`predict`: batched argmax of a model, optionally with per-example noise generators.
* :func:`rescore`: classify ``x_adv`` again, ``repeats`` times (several for randomized models).

Per-example generators (``generators[j]`` for row ``j``) only matter for a randomized model that
supports them (:class:`~robustmaxup.attacks.SoftSmoothed`); a deterministic model ignores them.
With them, the noise an example sees depends on the example alone, not on which other examples
share its batch (see :func:`~robustmaxup.attacks.smoothed.per_example_noise`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from robustmaxup.attacks.smoothed import per_example_noise
from robustmaxup.models.state import model_state
from robustmaxup.runtime.checks import FieldError, check_int


@dataclass
class AttackResult:
    """Per-example outcome of an attack evaluation on ``B`` examples.

    Attributes:
        x_adv: adversarial inputs ``[B, C, H, W]`` (``x`` itself where no attack succeeded).
        clean: bool ``[B]``, correctly classified before any attack.
        stages: ordered ``attack name -> bool [B]``: robust after this attack AND every earlier
            one (cumulative, pointwise worst case). The last stage is the overall verdict.
        rescored: bool ``[R, B]`` or None: ``model(x_adv)`` correct in each of ``R`` independent
            re-scorings (several for randomized models, one for deterministic ones).
        seconds: wall time of each attack (same keys as ``stages``).
    """

    x_adv: Tensor
    clean: Tensor
    stages: dict[str, Tensor] = field(default_factory=dict)
    rescored: Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def attack_robust(self) -> Tensor:
        """bool [B]: survived every attack (as judged during the attacks)."""
        return list(self.stages.values())[-1] if self.stages else self.clean

    @property
    def robust(self) -> Tensor:
        """bool [B]: survived every attack and every re-scoring of ``x_adv`` (the verdict)."""
        flags = self.attack_robust
        if self.rescored is not None:
            flags = flags & self.rescored.all(0)
        return flags


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int,
            generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """argmax of ``model`` on ``x`` in batches: int64 ``[B]`` (one host sync at the end).

    ``generators``: one per row of ``x``; a randomized model that supports it draws row ``j``'s
    noise from ``generators[j]`` (ignored by deterministic models).
    """
    check_int("batch_size", batch_size, minimum=1)
    if generators is not None and len(generators) != len(x):
        raise FieldError("generators", f"must be one per example: {len(x)} examples but {len(generators)}")
    out = []
    for i in range(0, len(x), batch_size):
        with per_example_noise(model, None if generators is None else generators[i:i + batch_size]):
            out.append(model(x[i:i + batch_size]).argmax(1))
    return torch.cat(out)


@torch.no_grad()
def rescore(model: nn.Module, x_adv: Tensor, y: Tensor, *, repeats: int = 1,
            batch_size: int = 250, generators: Sequence[torch.Generator] | None = None) -> Tensor:
    """Classify ``x_adv`` ``repeats`` times (eval mode): bool ``[repeats, B]``, True = correct.

    For a randomized model (e.g. :class:`~robustmaxup.attacks.SoftSmoothed`) each repeat draws
    fresh randomness; a single evaluation overstates robustness, so report the spread. With
    ``generators`` (one per example), example ``j``'s noise in every repeat comes from
    ``generators[j]`` alone, so its verdicts do not depend on the batch it is scored in.
    """
    check_int("repeats", repeats, minimum=1)
    with model_state(model, train=False):
        return torch.stack([predict(model, x_adv, batch_size, generators) == y
                            for _ in range(repeats)])
