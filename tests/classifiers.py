"""Base classifiers whose smoothed behaviour is known in closed form, shared by the
certification tests (test_smooth.py, test_sequential.py)."""

from __future__ import annotations

import numpy as np
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


def linear_points(rng: np.random.Generator, d: int, t: np.ndarray) -> tuple[np.ndarray, float, torch.Tensor]:
    """A random hyperplane ``(w, b)`` through the middle of the pixel cube and one image
    ``[len(t), 1, 1, d]`` in [0, 1]^d per normalised margin ``t_i = (w.x_i + b)/|w|`` (|t| <= 1):
    the smoothed ``[w.x + b > 0]`` has class ``[t > 0]`` and certified radius ``|t|``."""
    w = rng.normal(size=d)
    b = -0.5 * w.sum() + 0.05 * rng.normal()
    x0 = rng.uniform(0.4, 0.6, size=(len(t), d))
    wn = np.linalg.norm(w)
    x = x0 + (t - (x0 @ w + b) / wn)[:, None] * (w / wn)[None]
    assert x.min() >= 0 and x.max() <= 1, "d too small for these margins to fit in the pixel cube"
    return w, b, torch.tensor(x).view(len(t), 1, 1, d)
