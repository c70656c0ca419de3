"""Weight initialisations of the reference code, where it differs from PyTorch's defaults.

:func:`fan_out_init` is the He-normal initialisation that TRADES's and AWP's WideResNet
(yaodongyu/TRADES@6e8e11b ``models/wideresnet.py:74-82``: ``normal_(0, sqrt(2 / n))`` with
``n = k·k·out_channels``) and AMP's PreAct ResNet (hiyouga/AMP-Regularizer@87e689f
``models/preresnet.py:87-94``: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``) apply:
the two are the same distribution.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fan_out_init"]


@torch.no_grad()
def fan_out_init(model: nn.Module) -> nn.Module:
    """In place, and returns ``model``: every convolution's weight drawn from
    N(0, 2 / (k·k·out_channels)) (its bias, if any, keeps PyTorch's default), BatchNorm weight 1
    and bias 0, every Linear's bias 0 (its weight keeps PyTorch's default)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return model
