"""Base classifiers whose smoothed behaviour is known in closed form, shared by the
certification tests (test_smooth.py, test_sequential.py)."""

from __future__ import annotations

import torch
from torch import nn


class Constant(nn.Module):
    """Always predicts ``cls``."""

    def __init__(self, cls: int, num_classes: int = 10) -> None:
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x):
        out = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        out[:, self.cls] = 1.0
        return out


class LinearK(nn.Module):
    """A multi-class linear classifier (float64), whose votes vary under noise."""

    def __init__(self, d: int, k: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(d, k).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(k, d, generator=g, dtype=torch.float64))

    def forward(self, x):
        return self.lin(x.flatten(1))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Votes(nn.Module):
    """Row ``r`` of every batch votes ``classes[r % len(classes)]``: exact vote fractions under
    any noise (a batch size that is a multiple of ``len(classes)`` gives exact counts)."""

    def __init__(self, classes: list[int], num_classes: int) -> None:
        super().__init__()
        self.classes, self.num_classes = torch.tensor(classes), num_classes

    def forward(self, x):
        classes = self.classes.to(x.device)
        rows = classes[torch.arange(x.shape[0], device=x.device) % len(classes)]
        return nn.functional.one_hot(rows, self.num_classes).to(x.dtype)


class Scripted(nn.Module):
    """The ``s``-th noisy copy it is ever shown votes ``script[s]``, whatever the noise: a vote
    path chosen exactly, look by look. ``seen`` counts the copies shown so far."""

    def __init__(self, script: list[int], num_classes: int = 2) -> None:
        super().__init__()
        self.script, self.num_classes, self.seen = torch.tensor(script), num_classes, 0

    def forward(self, x):
        rows = self.script[self.seen:self.seen + x.shape[0]].to(x.device)
        if len(rows) < x.shape[0]:
            raise AssertionError(f"the script has {len(self.script)} votes; copy {self.seen + x.shape[0]} asked")
        self.seen += x.shape[0]
        return nn.functional.one_hot(rows, self.num_classes).to(x.dtype)
