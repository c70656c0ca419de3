"""Model zoo. Every model takes [0, 1] pixels and normalises inside, so smoothing noise and
attack budgets live in pixel space.

Example::

    from robustmaxup.models import build_model
    model = build_model("cifar_resnet110", num_classes=10, dataset="cifar10")
    logits = model(torch.rand(8, 3, 32, 32))      # [8, 10]
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torchvision
from torch import nn

from robustmaxup.data.info import get_info
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
MODELS.register("wrn_28_10")(lambda k, c: WideResNet(28, 10, k, c))
MODELS.register("wrn_34_10")(lambda k, c: WideResNet(34, 10, k, c))
MODELS.register("digits_cnn")(lambda k, c: DigitsCNN(k, c))


@MODELS.register("resnet50")
def _resnet50(num_classes: int, in_channels: int) -> nn.Module:
    net = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return net


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the constants are buffers saved with the model."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class NormalizedModel(nn.Module):
    """``net(normalize(x))`` for pixel inputs ``x`` in [0, 1], shape ``[B, C, H, W]``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def build_model(
    arch: str,
    num_classes: int | None = None,
    dataset: str | None = None,
    *,
    in_channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> NormalizedModel:
    """Build ``arch`` wrapped with normalisation. ``dataset`` supplies class count, channels and
    normalisation; explicit arguments override it. Unknown ``arch`` raises a UserError."""
    builder = MODELS.get(arch)
    info = get_info(dataset) if dataset is not None else None
    num_classes = num_classes if num_classes is not None else (info.num_classes if info else None)
    if num_classes is None:
        raise ValueError("build_model needs num_classes or dataset")
    in_channels = in_channels or (info.image_shape[0] if info else 3)
    mean = mean if mean is not None else (info.mean if info else (0.0,) * in_channels)
    std = std if std is not None else (info.std if info else (1.0,) * in_channels)
    return NormalizedModel(builder(num_classes, in_channels), mean, std)
