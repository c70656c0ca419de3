"""Shared fixtures. Tests run on the CPU with few threads; CUDA tests skip without a GPU."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture
def digits_batch():
    """A fixed batch of real digits images [16, 1, 8, 8] in [0, 1] with labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:16] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[:16], dtype=torch.long)
    return x, y
