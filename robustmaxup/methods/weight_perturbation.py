"""The shared core of the weight-space perturbations AWP and AMP.

Both wrap one training step of ANY method: inside ``perturbed(model, loss_fn)`` the weights are
moved to ``w + v``, ``v`` found by gradient ascent on the method's own loss ``loss_fn()``; the
engine takes the step's gradient there. Where the optimiser steps is the perturbation's
:attr:`step_at_perturbed`, following each reference code:

* False (AMP, ``hiyouga/AMP-Regularizer`` amp.py:60-64): on exit every perturbed weight is copied
  back from a saved copy, so the optimiser steps from *bitwise* the original weights::

      with perturbation.perturbed(model, loss_fn):
          method.loss(model, prepared).loss.backward()     # gradient at w + v
      optimizer.step()                                     # applied to w

* True (AWP, ``csdongxian/AWP`` AT_AWP/train_cifar10.py:340-363: perturb, gradient, step,
  restore): the optimiser steps at ``w + v`` and the exit removes ``v`` from the stepped
  weights, ``w' = w + (stepped - (w + v))``. Weight decay (and so momentum) then sees
  ``w + v``, as in the reference; without a step the exit gives ``w`` bitwise::

      with perturbation.perturbed(model, loss_fn):
          method.loss(model, prepared).loss.backward()
          optimizer.step()                                 # at w + v; v removed on exit

The search for ``v`` runs with BatchNorm running statistics frozen (its forwards still use batch
statistics in train mode) and takes gradients with ``torch.autograd.grad``, so it leaves nothing
in ``p.grad``. Under ``torch.distributed`` the search gradients are averaged over ranks so every
replica applies the same ``v``. Subclasses choose which tensors move (:meth:`select`) and how
``v`` is found (:meth:`search`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
import functools
from typing import Any, Callable, ClassVar, Iterator

import torch
import torch.distributed as dist
from torch import nn

from robustmaxup.methods.base import WeightPerturbation
from robustmaxup.models.state import frozen_bn_stats

LossFn = Callable[[], torch.Tensor]


def trainable(model: nn.Module, *, weights_only: bool) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``; with ``weights_only`` only tensors of dimension > 1
    (convolution and linear weights; BatchNorm affine parameters and biases are skipped)."""
    return [p for p in model.parameters() if p.requires_grad and (not weights_only or p.dim() > 1)]


def loss_gradients(model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Gradients of ``loss_fn()`` w.r.t. ``params`` (zeros where unused), without touching
    ``p.grad`` or BatchNorm running statistics; averaged over ranks under torch.distributed."""
    with frozen_bn_stats(model), torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        grads = [chunk.view_as(g) for chunk, g in zip(flat.split([g.numel() for g in grads]), grads)]
    return grads


@torch.no_grad()
def set_weights(params: list[nn.Parameter], originals: list[torch.Tensor], deltas: list[torch.Tensor]) -> None:
    """``p <- original + delta`` for each parameter (recomputed from the saved original, so
    repeated search steps do not accumulate rounding)."""
    for p, w, v in zip(params, originals, deltas):
        p.copy_(w + v.to(w.dtype))


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the concatenation of ``tensors`` (a 0-dim tensor), computed in at least float32
    (bf16/fp16 tensors are widened; float64 ones keep their precision)."""
    if not tensors:
        return torch.zeros(())
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.to(dtype)) for t in tensors]))


@dataclass
class PerturbationCore(WeightPerturbation):
    """Dataclass base of AWP/AMP: its fields are the ``--awp-*``/``--amp-*`` options (the first,
    ``--awp-gamma``/``--amp-eps``, switches the perturbation on). ``warmup`` epochs run
    unperturbed."""

    name: ClassVar[str] = "core"

    def __post_init__(self) -> None:
        self._active = True

    # --- what subclasses define ------------------------------------------------------------
    def select(self, model: nn.Module) -> list[nn.Parameter]:
        raise NotImplementedError

    def search(self, model: nn.Module, loss_fn: LossFn, params: list[nn.Parameter],
               originals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Return the perturbation ``v`` (one tensor per parameter). May move the weights while
        searching (``set_weights``); the core sets ``w + v`` afterwards and restores ``w``."""
        raise NotImplementedError

    # --- the shared machinery ----------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Switch the perturbation on once ``epoch`` (0-based) reaches ``warmup``."""
        self._active = epoch >= getattr(self, "warmup", 0)

    @contextlib.contextmanager
    def perturbed(self, model: nn.Module, loss_fn: LossFn) -> Iterator[list[torch.Tensor]]:
        """Weights at ``w + v`` inside the block (yields ``v``, empty when inactive). On exit,
        even on error: exactly ``w`` again, or, with :attr:`step_at_perturbed`, ``w`` plus
        whatever the block changed (the optimiser's step taken at ``w + v``). Gradients
        accumulated inside stay in ``p.grad``."""
        if not self._active:
            yield []
            return
        params = self.select(model)
        originals = [p.detach().clone() for p in params]
        deltas: list[torch.Tensor] = []
        try:
            deltas = self.search(model, loss_fn, params, originals)
            set_weights(params, originals, deltas)
            yield deltas
        finally:
            with torch.no_grad():
                if self.step_at_perturbed and deltas:
                    for p, w, v in zip(params, originals, deltas):   # the same w + v as set above
                        p.copy_(w + (p - (w + v.to(w.dtype))))
                else:
                    for p, w in zip(params, originals):
                        p.copy_(w)

    def hparams(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
