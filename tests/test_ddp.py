"""DistributedDataParallel training (gloo on CPU) equals a single process on the same global
batch: each rank takes its share of every global batch and DDP averages the gradients."""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp
from torch import nn

from robustmaxup.train import TrainConfig, train
from robustmaxup.models import MODELS

def _register_mlp() -> None:
    """BatchNorm statistics are per rank, so the exact equivalence is checked on a model without
    it. Registered at run time (in each process), never at import, so that the registry's contract
    tests do not see it."""
    if "test_mlp" not in MODELS:
        MODELS.register("test_mlp")(
            lambda k, c: nn.Sequential(nn.Flatten(), nn.Linear(64 * c, 32), nn.ReLU(), nn.Linear(32, k)))


def _cfg(out: str, seed: int = 0) -> TrainConfig:
    return TrainConfig(dataset="digits", arch="test_mlp", method="standard", epochs=2, batch=64, lr=0.1,
                       data_augment=False, val_size=0, max_eval=0, out=out, quiet=True, seed=seed, device="cpu")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _register_mlp()
    train(_cfg(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    _register_mlp()
    train(_cfg(str(tmp_path / "single")))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert len(ddp["rng"]["generators"]) == 2
    for k, v in single["model"].items():
        assert torch.allclose(v, ddp["model"][k], atol=1e-5, rtol=1e-4), k
    # and the comparison can fail: a different seed gives different weights
    assert not all(torch.allclose(v, ddp["model"][k], atol=1e-5) for k, v in
                   torch.load(_other_seed_run(tmp_path), weights_only=True)["model"].items())


def _other_seed_run(tmp_path):
    train(_cfg(str(tmp_path / "seed1"), seed=1))
    return tmp_path / "seed1" / "last.pt"
