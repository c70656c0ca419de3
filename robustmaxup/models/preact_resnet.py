"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"),
the CIFAR variant used by Rice et al. 2020 and most adversarial-training baselines.

``block_bias=True, fan_out=True, amp_blocks=True`` is the AMP reference's variant
(hiyouga/AMP-Regularizer@87e689f ``models/preresnet.py``): the blocks' convolutions and shortcuts
have biases (:17, :21, :25; the stem has none, :74), the weights get
:func:`~robustmaxup.models.init.fan_out_init` (:87-94), and an identity shortcut carries the
pre-activated input (:30-31). Registered as ``amp_preact_resnet18``; AMP perturbs those 19 bias
tensors too."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.models.init import fan_out_init


class PreActBlock(nn.Module):
    """``preact_identity``: an identity shortcut carries ``relu(bn1(x))``, as AMP's blocks do
    (``models/preresnet.py:30-31``), not ``x``, as Rice et al.'s and He et al.'s do."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bias: bool = False,
                 preact_identity: bool = False) -> None:
        super().__init__()
        self.preact_identity = preact_identity
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=bias)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if self.shortcut is not None:
            shortcut = self.shortcut(out)
        else:
            shortcut = out if self.preact_identity else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, *, block_bias: bool = False,
                 fan_out: bool = False, amp_blocks: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        widths, strides, layers, cin = (64, 128, 256, 512), (1, 2, 2, 2), [], 64
        for w, s in zip(widths, strides):
            layers.append(nn.Sequential(PreActBlock(cin, w, s, block_bias, amp_blocks),
                                        PreActBlock(w, w, 1, block_bias, amp_blocks)))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512)
        self.fc = nn.Linear(512, num_classes)
        if fan_out:
            fan_out_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.layers(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
