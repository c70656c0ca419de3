"""certify_dataset / predict_dataset without a file under two gloo processes (torchrun's layout):
rank 0 returns every image's row, the same rows one process returns, and the other rank none;
a process group the caller joined before stays joined afterwards."""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from robustmaxup.certify import Smooth
from robustmaxup.certify.runner import certify_dataset, predict_dataset
from robustmaxup.data import load_split
from robustmaxup.runtime.dist import Dist

KW = dict(n=200, alpha=0.01, batch_size=100, seed=3, progress=False)
INDICES = [6, 0, 4, 1, 5]          # unsorted, and not divisible by the two ranks


def _split():
    return load_split("digits", "test")


def _smooth() -> Smooth:
    torch.manual_seed(0)
    return Smooth(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), 10, 0.5)


def _run(dist: Dist | None) -> dict:
    return {"certify": certify_dataset(_smooth(), _split(), INDICES, n0=20, dist=dist, **KW),
            "predict": predict_dataset(_smooth(), _split(), INDICES, dist=dist, **KW)}


def _worker(rank: int, world: int, port: int, out: str, joined_before: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    if joined_before:
        tdist.init_process_group("gloo")
    result = _run(Dist.from_env())
    result["still_joined"] = tdist.is_initialized()
    with open(f"{out}.{rank}", "wb") as f:
        pickle.dump(result, f)
    if tdist.is_initialized():
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(tmp_path, joined_before: bool) -> list[dict]:
    out = str(tmp_path / "rows")
    mp.spawn(_worker, args=(2, _free_port(), out, joined_before), nprocs=2, join=True)
    return [pickle.load(open(f"{out}.{rank}", "rb")) for rank in range(2)]


def _untimed(rows: list) -> list:
    """Every field but the per-image time."""
    return [dataclasses.replace(r, time=0.0) for r in rows]


def test_rank0_returns_every_row_of_a_sharded_run_without_a_file(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    alone = _run(None)
    rank0, rank1 = _spawn(tmp_path, joined_before=False)
    for command in ("certify", "predict"):
        assert [r.idx for r in rank0[command]] == sorted(INDICES)
        assert _untimed(rank0[command]) == _untimed(alone[command])
        assert rank1[command] == []
    assert not rank0["still_joined"] and not rank1["still_joined"]   # left the group it joined


def test_a_group_joined_by_the_caller_stays_joined(tmp_path, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    rank0, rank1 = _spawn(tmp_path, joined_before=True)
    assert rank0["still_joined"] and rank1["still_joined"]
    assert [r.idx for r in rank0["certify"]] == sorted(INDICES)
