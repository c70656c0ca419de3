"""The training-method interface the engine knows.

A method is a dataclass whose fields are its hyper-parameters (their names match the
``robustmaxup train`` flags with ``-`` for ``_``). One training step is::

    prepared = method.prepare(model, x, y, generator=g)   # noise, attacks, mixing: no weight grads
    out = method.loss(model, prepared)                     # differentiable; out.loss is a scalar
    out.loss.backward(); optimizer.step()

Splitting ``prepare`` from ``loss`` lets weight-perturbation wrappers (AWP, AMP) re-evaluate the
loss at perturbed weights on the same adversarial/noisy batch without redoing the attack.

This module holds the three interfaces of the room (:class:`Method`, :class:`WeightPerturbation`,
:class:`Augmentation`), the loss helpers and the value checks every method shares; the shared
method bases (families) are in :mod:`robustmaxup.methods.families`, the registries in
:mod:`robustmaxup.methods.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.runtime import checks


@dataclass
class LossOutput:
    """``loss``: scalar to minimise. ``logits``/``targets``: rows for the train-accuracy metric
    (hard labels ``[B]``), or None."""

    loss: torch.Tensor
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


@dataclass
class Method:
    """Base class: subclasses are dataclasses registered in ``METHODS``.

    Class attributes:
      ``name``   the registry name;
      ``family`` ``"smoothing"`` (validated by noisy accuracy at ``sigma``), ``"adversarial"``
                 (validated by PGD robust accuracy) or ``"standard"`` (clean accuracy).
    """

    name: ClassVar[str] = "base"
    family: ClassVar[str] = "standard"

    num_classes: int = field(default=0, repr=False, metadata={"internal": True})

    # --- hooks -----------------------------------------------------------------------------
    def setup(self, *, num_classes: int) -> None:
        """Called once by the engine before training."""
        self.num_classes = num_classes

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called at the start of each epoch (0-based), e.g. for an epsilon warm-up."""

    # --- how a loader batch becomes optimiser steps, and what it costs ------------------------
    def reference_chunks(self) -> int:
        """Optimiser steps the method's reference code takes per loader batch.

        Under ``step_structure="reference"`` the engine splits a loader batch of B examples into
        this many consecutive chunks of ``B // chunks`` examples (a remainder is dropped, as in
        the reference code) and takes one ``prepare``/``loss``/step per chunk; under ``"joint"``
        it takes one step on the whole batch. 1 (the default) makes the two the same."""
        return 1

    def prepare_cost(self) -> float:
        """Estimated compute of :meth:`prepare` per training example, in forward passes of one
        example: a no-grad forward counts 1, an attack step (forward plus a backward to the
        input) counts 3. Default: nothing."""
        return 0.0

    def loss_cost(self) -> float:
        """Estimated compute of :meth:`loss` plus its backward per training example (forward
        passes of one example; a forward with its backward counts 3). Default: one forward."""
        return 3.0

    def cost(self) -> float:
        """Estimated compute per training example: ``prepare_cost() + loss_cost()``. Plain
        cross-entropy training costs 3. Used to give methods equal compute budgets
        (``experiments/reproduce.py --budget``); ``tests/test_method_cost.py`` checks it against
        counted forwards."""
        return self.prepare_cost() + self.loss_cost()

    # --- the step --------------------------------------------------------------------------
    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator | None = None) -> Any:
        """Build what ``loss`` trains on (default: the clean batch). No parameter gradients."""
        return x, y

    def loss(self, model: nn.Module, prepared: Any) -> LossOutput:
        x, y = prepared
        logits = model(x)
        return LossOutput(F.cross_entropy(logits, y), logits.detach(), y)

    # --- validation (robust-overfitting selection) ------------------------------------------
    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-example correctness ``[B]`` (bool) of the method's validation metric; the engine
        calls it with the model in eval mode under ``torch.no_grad`` unless the method needs
        gradients (adversarial methods enable them themselves)."""
        return model(x).argmax(1) == y

    # --- description -------------------------------------------------------------------------
    def hparams(self) -> dict[str, Any]:
        """The hyper-parameters (dataclass fields not marked internal)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.metadata.get("internal")
        }

    @classmethod
    def hparam_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


class WeightPerturbation:
    """Interface of step wrappers (AWP, AMP): ``perturbed(model, loss_fn)`` is a context manager
    inside which the model's weights are perturbed (in the worst direction of ``loss_fn()``); the
    engine takes the gradient there; the optimiser steps either after the exit has restored the
    weights exactly, or inside it with the exit then removing the perturbation
    (:attr:`step_at_perturbed`)."""

    name: ClassVar[str] = "none"

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called at the start of each epoch (0-based), e.g. for a warm-up before perturbing."""

    @property
    def step_at_perturbed(self) -> bool:
        """True: the engine calls ``optimizer.step()`` *inside* ``perturbed`` (at ``w + v``) and
        the exit removes ``v`` afterwards (AWP's reference order: perturb, gradient, step,
        restore). False: the exit restores ``w`` first and the engine steps after it (AMP's)."""
        return False

    def cost(self, loss_cost: float) -> float:
        """Extra compute per training example once active, for a method whose loss costs
        ``loss_cost`` (forward-pass units, see :meth:`Method.cost`)."""
        return 0.0

    def perturbed(self, model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> ContextManager:
        raise NotImplementedError

    def hparams(self) -> dict[str, Any]:
        return {}


@dataclass
class Augmentation:
    """Interface of augmentations (what MaxUp maximises over, what the mixing methods train on):
    ``aug(x, y, num_classes=K, generator=g)`` maps a clean batch to one random augmented copy
    ``(x_aug, target)``; see :mod:`robustmaxup.methods.augment`. The base class is the identity."""

    name: ClassVar[str] = "identity"
    mixes_labels: ClassVar[bool] = False

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *, num_classes: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """FieldError naming the hyper-parameter unless ``value`` is a finite number > 0 (>= 0);
    the CLI shows it under its flag (:func:`robustmaxup.runtime.checks.check_positive`)."""
    checks.check_positive(name, value, allow_zero=allow_zero)


def per_example_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per row ``[N]``, for hard ``[N]`` or soft ``[N, K]`` targets."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target, reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for hard labels ``[B]`` or soft label distributions ``[B, K]``."""
    return per_example_loss(logits, target).mean()


def check_count(name: str, value: int, minimum: int) -> None:
    """FieldError naming the hyper-parameter unless ``value`` is an integer >= ``minimum``
    (:func:`robustmaxup.runtime.checks.check_int`)."""
    checks.check_int(name, value, minimum=minimum)


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or in its own dtype if wider (float64 stays float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))
