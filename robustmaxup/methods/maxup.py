"""MaxUp (Gong, Ren, Ye & Liu 2020, "MaxUp: A Simple Way to Improve Generalization of Neural
Network Training", arXiv 2002.09024): draw m = ``copies`` augmented copies of each example and
minimise the loss of the *worst* copy, ``max_i ℓ(f(x'_i), y'_i)``.

With Gaussian noise (the default, ``--augment gaussian``) the copies are ``x + δ_i``,
δ_i ~ N(0, σ² I), which trains a base classifier for randomized smoothing. Other registered
augmentations (mixup, CutMix, k-mixup) are maximised over the same way, with no noise unless
``sigma`` is given: ``sigma > 0`` adds Gaussian noise on top of each mixed copy, so the result can
still be smoothed. Defaults: ``copies = 4``; ``sigma = 0.25`` with ``--augment gaussian``, else 0;
``mix_alpha`` and ``k``: the augmentation's own defaults (``mix_alpha``: mixup and CutMix 1.0, k-mixup
10.0; ``k``: 16, k-mixup only). An option the chosen augmentation does not use is refused when
given (``mix_alpha`` with Gaussian copies) and recorded as None otherwise. The resolved values are what
``hparams()`` records.

Efficient gradient. The gradient of a max is the gradient of its argmax, so ``prepare`` scores
all m·B copies in one batched forward *without* autograd, keeps each example's worst copy, and
``loss`` runs forward + backward on those B copies only: m+1 forwards' worth of compute but
memory of a single step (the naive version backpropagates through all m·B copies).

Batch-norm subtlety. With BatchNorm in eval mode (or without BatchNorm) the efficient and the
naive version give the same loss and gradients (tested in float64). In train mode they differ
slightly: the naive version normalises with statistics of all m·B copies, the efficient one
scores with those but trains with the statistics of the B selected worst copies. Scoring does
not update BatchNorm running statistics (momentum is frozen during it), so running statistics
see exactly the batches that are trained on, as in a plain Gaussian-augmentation step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.methods.augment import gaussian_noise
from robustmaxup.methods.base import (
    Augmentation, LossOutput, Method, check_count, check_positive, per_example_loss,
    soft_cross_entropy,
)
from robustmaxup.methods.registry import AUGMENTATIONS, register_method
from robustmaxup.models.state import frozen_bn_stats
from robustmaxup.runtime.checks import FieldError

#: σ of Gaussian MaxUp when none is given (Cohen et al.'s σ = 0.25 column)
DEFAULT_SIGMA = 0.25

#: MaxUp fields that belong to some augmentations only (taken from the augmentation's defaults)
AUGMENTATION_OPTIONS = ("mix_alpha", "k")


def augmentation_defaults(augment: str) -> dict[str, Any]:
    """The options of the registered augmentation ``augment`` and their defaults."""
    return {f.name: f.default for f in dataclasses.fields(AUGMENTATIONS.get(augment))}


@register_method
@dataclass
class MaxUp(Method):
    """Minimise the worst of ``copies`` augmented copies (see module docstring).

    Example::

        method = MaxUp(copies=4)                          # Gaussian, σ = 0.25
        method = MaxUp(copies=4, augment="cutmix")        # CutMix copies, no noise
    """

    name: ClassVar[str] = "maxup"
    sigma: float | None = field(default=None, metadata={
        "help": "none: 0.25 with --augment gaussian, else 0 (no noise on mixed copies)"})
    copies: int = 4
    augment: str = "gaussian"
    mix_alpha: float | None = field(default=None, metadata={
        "help": "Beta(a, a) of mixed copies (mixup, cutmix, kmixup); none: the augmentation's default"})
    k: int | None = field(default=None, metadata={
        "help": "k-mixup group size; none: the augmentation's default"})
    score_batch: int = 0  # max copies per scoring forward; 0 = all m·B at once

    def __post_init__(self) -> None:
        check_count("copies", self.copies, 1)
        check_count("score_batch", self.score_batch, 0)
        cls = AUGMENTATIONS.get(self.augment)
        if self.sigma is None:
            self.sigma = DEFAULT_SIGMA if self.augment == "gaussian" else 0.0
        check_positive("sigma", self.sigma, allow_zero=self.augment != "gaussian")
        self._resolve_augmentation_options()
        self._augmentation = self._build_augmentation(cls)

    def _resolve_augmentation_options(self) -> None:
        """``mix_alpha`` and ``k`` take the augmentation's defaults; one it does not use must be unset."""
        own = augmentation_defaults(self.augment)
        for name in AUGMENTATION_OPTIONS:
            if name in own:
                setattr(self, name, own[name] if getattr(self, name) is None else getattr(self, name))
            elif getattr(self, name) is not None:
                users = [a for a in AUGMENTATIONS.names() if name in augmentation_defaults(a)]
                raise FieldError(name, f"is not used by the {self.augment} augmentation (only by "
                                       f"{', '.join(users)}); drop it or choose another augmentation")

    def _build_augmentation(self, cls: type[Augmentation]) -> Augmentation:
        shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(self)}
        return cls(**{name: getattr(self, name) for name in shared})

    def prepare_cost(self) -> float:
        return float(self.copies) if self.copies > 1 else 0.0   # the no-grad scoring forward

    @property
    def family(self) -> str:  # type: ignore[override]
        return "smoothing" if self.sigma > 0 else "standard"

    def draw_copies(self, x: torch.Tensor, y: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``copies`` augmented copies stacked as ``[m·B, ...]`` (copy-major) and their targets."""
        xs, ts = [], []
        for _ in range(self.copies):
            xi, ti = self._augmentation(x, y, num_classes=self.num_classes, generator=generator)
            if self.augment != "gaussian" and self.sigma > 0:
                xi = gaussian_noise(xi, self.sigma, generator)
            xs.append(xi)
            ts.append(ti)
        if any(t.dim() == 2 for t in ts):  # mixed labels: make every target a distribution
            ts = [t if t.dim() == 2 else F.one_hot(t, self.num_classes).to(x.dtype) for t in ts]
        return torch.cat(xs), torch.cat(ts)

    @torch.no_grad()
    def select_worst(self, model: nn.Module, xs: torch.Tensor, ts: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``xs`` (copy-major ``[m·B, ...]``) and return each example's worst copy."""
        chunk = self.score_batch or xs.shape[0]
        with frozen_bn_stats(model):
            losses = torch.cat([
                per_example_loss(model(xs[i:i + chunk]).float(), ts[i:i + chunk])
                for i in range(0, xs.shape[0], chunk)
            ])
        worst = losses.view(self.copies, batch).argmax(0)                # [B]
        rows = worst * batch + torch.arange(batch, device=xs.device)     # copy-major index
        return xs[rows], ts[rows]

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        xs, ts = self.draw_copies(x, y, generator)
        if self.copies == 1:
            return xs, ts
        return self.select_worst(model, xs, ts, x.shape[0])

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, t = prepared
        logits = model(x)
        hard = t if t.dim() == 1 else t.argmax(1)
        return LossOutput(soft_cross_entropy(logits, t), logits.detach(), hard)

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if self.sigma > 0:
            x = gaussian_noise(x, self.sigma, generator)
        return model(x).argmax(1) == y


def naive_maxup_loss(model: nn.Module, xs: torch.Tensor, ts: torch.Tensor, m: int) -> torch.Tensor:
    """Reference: all m·B copies with autograd, max over copies, mean over examples."""
    losses = per_example_loss(model(xs), ts).view(m, -1)
    return losses.max(0).values.mean()
