"""Inference-time folding of BatchNorm into the convolution before it.

In eval mode a BatchNorm is the per-channel affine map ``y = γ (x − μ) / √(σ² + ε) + β``; after
a convolution with weight ``W`` and bias ``b`` it can be folded into that convolution
(``W' = W·s``, ``b' = (b − μ)·s + β`` with ``s = γ / √(σ² + ε)``), which removes one read and one
write of every activation. Certification runs the base classifier ~10⁵ times per image and a
CIFAR ResNet's forward pass is bound by memory traffic, not arithmetic, so each folded layer
saves real time there.

The folded model computes the same function up to floating-point rounding (fp32: relative
differences ~1e-6; see tests/test_fold.py), so its smoothed classifier can differ from the
unfolded one's only on noise draws whose top two logits tie to within rounding. A certificate
is a statement about the classifier actually run, so a run that folds states it in its record.

Example::

    folded, pairs = fold_batchnorm(model.eval())   # a new module; ``model`` is unchanged
"""

from __future__ import annotations

import copy
import logging
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from robustmaxup.runtime.text import error_summary

log = logging.getLogger(__name__)

__all__ = ["fold_batchnorm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (isinstance(conv, _CONVS) and isinstance(bn, _NORMS) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features
            and type(conv).__name__[-2:] == type(bn).__name__[-2:])  # Conv2d with BatchNorm2d


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every ``Conv → BatchNorm`` pair folded into one
    convolution, and the number of pairs folded.

    A pair is folded only where the convolution's output feeds the BatchNorm alone (a
    convolution whose output is also used elsewhere keeps both). A model that ``torch.fx``
    cannot trace, or with nothing to fold, is returned as an unchanged eval-mode copy (0 pairs).
    ``model`` itself is never modified. The copy is for inference only: it has no BatchNorm
    statistics left to update.

    Args:
        model: any ``nn.Module``; its parameters may live on any device and dtype.
    Returns:
        ``(folded, pairs)``: ``folded`` is an ``nn.Module`` on ``model``'s device.
    """
    original = copy.deepcopy(model).eval()
    try:
        # the traced module holds ``original``'s layers; folding sets new ones in its place
        # (fuse_conv_bn_eval copies), so ``original`` stays as it is
        gm = fx.symbolic_trace(original)
    except Exception as e:  # noqa: BLE001 - any tracing failure means "cannot fold"
        log.info("BatchNorm folding skipped: the model cannot be traced by torch.fx (%s)",
                 error_summary(e, 160))
        return original, 0
    # a convolution called at two places cannot take one call's BatchNorm: the fused module
    # would replace the shared one at the other call too
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    pairs = 0
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, _NORMS) or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        producer = node.args[0]
        conv = _module(gm, producer)
        if not _foldable(conv, bn) or len(producer.users) != 1 or calls[producer.target] != 1:
            continue
        with torch.no_grad():
            _set_module(gm, producer.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(producer)
        gm.graph.erase_node(node)
        pairs += 1
    if not pairs:
        return original, 0
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm.eval(), pairs
