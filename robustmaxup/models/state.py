"""Context managers that change a model's mode and restore it exactly, even on error."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError


@contextlib.contextmanager
def model_state(
    model: nn.Module, *, train: bool | None = None, requires_grad: bool | None = None
) -> Iterator[nn.Module]:
    """Temporarily set ``model.train(train)`` and every parameter's ``requires_grad``.

    On exit (normal or by exception) each submodule's ``training`` flag and each parameter's
    ``requires_grad`` are restored to what they were, so attacks and evaluators leave no trace.
    ``None`` leaves that aspect alone.

    Example::

        with model_state(model, train=False, requires_grad=False):
            x_adv = ...  # gradients flow to the input only
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        if train is not None:
            model.train(train)
        if requires_grad is not None:
            for p, _ in grads:
                p.requires_grad_(requires_grad)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Forward passes inside this block use batch statistics (in train mode) but do not update
    BatchNorm running statistics: momentum is set to 0 and ``num_batches_tracked`` restored.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in bns]
    try:
        for m in bns:
            m.momentum = 0.0
        yield model
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def float_parameter(model: nn.Module) -> nn.Parameter | None:
    """``model``'s first floating-point parameter (its dtype and device), or None."""
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype images must have for ``model``: its floating-point parameters' (float32 for a
    model without any). The dataset runners cast their float32 batches to it, so a float64 model
    certifies and is attacked in float64."""
    p = float_parameter(model)
    return torch.float32 if p is None else p.dtype


def check_model_input(model: nn.Module, x: torch.Tensor, field: str = "x", *,
                      also: torch.dtype | None = None) -> None:
    """FieldError unless ``x`` is on the device type and has the dtype (or ``also``: the one it
    is computed in, e.g. an attack's fp32) of ``model``'s floating-point parameters (a model
    without any takes anything): naming the fix, not a kernel's type error."""
    p = float_parameter(model)
    if p is None:
        return
    if p.device.type != x.device.type:
        raise FieldError(field, f"is on {x.device} but the model on {p.device}; move one of them")
    if p.dtype not in (x.dtype, also):
        raise FieldError(field, f"is {x.dtype} but the model {p.dtype}; convert one of them "
                                f"(x.to({p.dtype}) or model.to({x.dtype}))")


def check_model_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """UserError unless ``model(x)`` (in eval mode, without gradients: no statistic moves) is one
    row of ``num_classes`` logits per image: a builder that returns another class count, a tuple
    (logits, features) or one score per image is named before training, not deep inside it."""
    with torch.no_grad(), model_state(model, train=False):
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise UserError(f"the model returns a {type(out).__name__}; it must return logits [B, K], one row "
                        "per image (a model with extra outputs needs a wrapper that keeps the logits)")
    if tuple(out.shape) != (x.shape[0], num_classes):
        raise UserError(f"the model returns shape {tuple(out.shape)} for {x.shape[0]} images; the data has "
                        f"{num_classes} classes, so it must return [{x.shape[0]}, {num_classes}] logits")
