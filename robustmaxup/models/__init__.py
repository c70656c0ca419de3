"""Model zoo. Every model takes [0, 1] pixels and normalises inside, so smoothing noise and
attack budgets live in pixel space.

Models know nothing about datasets: :func:`build_model` takes the class count, input channels
and normalisation explicitly. Starting from a dataset name, use
:func:`robustmaxup.checkpoints.build_model_for`, which reads them from the dataset registry.

Example::

    from robustmaxup.models import build_model
    model = build_model("cifar_resnet110", 10, mean=(0.4914, 0.4822, 0.4465),
                        std=(0.2023, 0.1994, 0.2010))
    logits = model(torch.rand(8, 3, 32, 32))      # [8, 10]
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from robustmaxup.errors import UserError
from robustmaxup.models.digits_cnn import DigitsCNN
from robustmaxup.models.preact_resnet import PreActResNet18
from robustmaxup.models.resnet_cifar import CifarResNet
from robustmaxup.models.state import frozen_bn_stats, model_state
from robustmaxup.models.wide_resnet import WideResNet
from robustmaxup.registry import Registry

__all__ = [
    "MODELS", "Normalize", "NormalizedModel", "build_model", "model_state", "frozen_bn_stats",
]

# A builder maps (num_classes, in_channels) to an un-normalised network.
Builder = Callable[[int, int], nn.Module]
MODELS: Registry[Builder] = Registry("architecture")

MODELS.register("cifar_resnet20")(lambda k, c: CifarResNet(20, k, c))
MODELS.register("cifar_resnet110")(lambda k, c: CifarResNet(110, k, c))
MODELS.register("preact_resnet18")(lambda k, c: PreActResNet18(k, c))
MODELS.register("amp_preact_resnet18")(
    lambda k, c: PreActResNet18(k, c, block_bias=True, fan_out=True, amp_blocks=True))
MODELS.register("wrn_28_10")(lambda k, c: WideResNet(28, 10, k, c))
MODELS.register("wrn_34_10")(lambda k, c: WideResNet(34, 10, k, c))
MODELS.register("digits_cnn")(lambda k, c: DigitsCNN(k, c))


@MODELS.register("resnet50")
def _resnet50(num_classes: int, in_channels: int) -> nn.Module:
    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net


def check_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` if it is images ``[B, channels, H, W]`` (any shape when ``channels`` is 1, which
    broadcasts by design), else UserError: per-channel constants would broadcast silently over
    a 1-channel image. Wrapped for ``torch.fx``, so BatchNorm folding traces past it and the
    folded model still checks."""
    if channels > 1 and (x.dim() != 4 or x.shape[1] != channels):
        raise UserError(f"the model takes images [B, {channels}, H, W] (pixels in [0, 1]), got "
                        f"shape {tuple(x.shape)}")
    return x


torch.fx.wrap("check_channels")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the constants are buffers saved with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.channels = len(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_channels(x, self.channels)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormalizedModel(nn.Module):
    """``net(normalize(x))`` for pixel inputs ``x`` in [0, 1], shape ``[B, C, H, W]``.

    ``output_order`` (a buffer, ``None`` unless set by :meth:`set_output_order`) reorders the
    logits: output ``j`` is ``net``'s output ``output_order[j]``.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.register_buffer("output_order", None)

    def set_output_order(self, order: Sequence[int] | None) -> None:
        """Make output ``j`` score ``net``'s output ``order[j]`` (a permutation; ``None`` or the
        identity: no reordering). Once set, the order is part of the state dict."""
        identity = list(range(len(order))) if order is not None else []
        if order is not None and sorted(order) != identity:
            raise ValueError(f"output order must be a permutation of 0..{len(order) - 1}, got {list(order)}")
        if order is None or list(order) == identity:
            self.output_order = None
            return
        device = self.normalize.mean.device
        self.output_order = torch.tensor(list(order), dtype=torch.long, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        return out if self.output_order is None else out.index_select(1, self.output_order)


def build_model(
    arch: str,
    num_classes: int,
    *,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """Build ``arch`` for ``num_classes`` classes and ``in_channels`` input channels, wrapped with
    the per-channel normalisation ``(x - mean) / std`` (default: none, i.e. mean 0 and std 1).
    Unknown ``arch`` raises a UserError listing the known ones.

    Example::

        model = build_model("digits_cnn", 10, in_channels=1, mean=(0.3053,), std=(0.3760,))
    """
    builder = MODELS.get(arch)
    mean = mean if mean is not None else (0.0,) * in_channels
    std = std if std is not None else (1.0,) * in_channels
    return NormalizedModel(builder(num_classes, in_channels), mean, std)
