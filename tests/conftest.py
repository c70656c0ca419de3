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


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory) -> str:
    """A digits_cnn briefly trained with Gaussian noise (so the votes are not trivial), saved
    as a robustmaxup checkpoint with training sigma 0.25. Tests must not modify the file."""
    from robustmaxup.checkpoints import build_model_for, save_checkpoint
    from robustmaxup.data import load_split

    torch.manual_seed(0)
    split = load_split("digits", "train")
    x, y = split.batch(list(range(len(split))))
    model = build_model_for("digits_cnn", "digits")
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        i = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[i] + 0.25 * torch.randn_like(x[i])), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                           "model": model.eval().state_dict(), "method": "gaussian",
                           "hparams": {"sigma": 0.25}, "epoch": 1})
    return str(path)


@pytest.fixture(scope="session")
def untrained_ckpt(tmp_path_factory) -> str:
    """An untrained digits_cnn checkpoint (training sigma 0.25), for tests of what commands and
    runners do with a checkpoint, not of how well it certifies."""
    from robustmaxup.checkpoints import build_model_for, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("untrained") / "digits.pt"
    save_checkpoint(path, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                           "model": build_model_for("digits_cnn", "digits").eval().state_dict(),
                           "method": "gaussian", "hparams": {"sigma": 0.25}, "epoch": 1})
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_git_state():
    """git is asked once per process (runtime.records._tree_state); tests that replace what it
    says start and end with a fresh answer."""
    from robustmaxup.runtime import records

    records._tree_state.cache_clear()
    yield
    records._tree_state.cache_clear()
