"""Kill-and-resume at every write boundary: a real process ends abruptly (``os._exit(137)``,
like ``kill -9``) at a named fault point (:mod:`robustmaxup.runtime.faults`), the run is resumed
without the fault, and its outputs equal an uninterrupted run's: byte for byte, the time column
and timing fields aside (``metrics.jsonl`` included, compared without its timing keys).

One point per command runs in the fast suite; the whole matrix is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustmaxup.cli import main
from robustmaxup.runtime.faults import FAULT_ENV

CERTIFY = ["--dataset", "digits", "--n0", "10", "--n", "100", "--batch", "100", "--max", "3",
           "--quiet", "--device", "cpu"]
ATTACK = ["--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "2",
          "--n-examples", "6", "--batch", "2", "--quiet", "--device", "cpu"]
TRAIN = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "2", "--max-train", "200",
         "--max-eval", "30", "--batch", "50", "--lr", "0.05", "--quiet", "--device", "cpu"]
TIMING_KEYS = {"img_per_s", "epoch_seconds", "eval_seconds", "total_time_s", "this_call_s", "timings", "wall_seconds_this_session"}

# (command, fault point): every write boundary; the first of each command runs in the fast suite
POINTS = {
    "certify": ["certify.row:2", "certify.header", "certify.sidecar_started", "certify.row:1",
                "certify.merge", "certify.sidecar"],
    "predict": ["predict.header", "predict.sidecar_started", "predict.row:1", "predict.row:2",
                "predict.merge", "predict.sidecar"],
    "attack": ["attack.chunk:2", "attack.locked", "attack.chunk:1", "attack.chunk:3", "attack.tsv",
               "attack.adv", "attack.json"],
    "train": ["train.checkpoint:1", "train.locked", "train.config", "train.best:1", "train.metrics:1",
              "train.checkpoint:2"],
}
CASES = [pytest.param(cmd, point, marks=() if i == 0 else pytest.mark.slow, id=f"{point}")
         for cmd, points in POINTS.items() for i, point in enumerate(points)]


def _argv(cmd: str, ck: str, d: Path) -> list[str]:
    if cmd == "train":
        return TRAIN + ["--out", str(d / "run")]
    if cmd == "attack":
        return ["attack", ck, *ATTACK, "--out", str(d / "a.json"), "--save-adv", str(d / "adv.pt")]
    extra = CERTIFY if cmd == "certify" else [a for a in CERTIFY if a not in ("--n0", "10")]
    return [cmd, ck, *extra, "--out", str(d / "o.tsv")]


@pytest.fixture(scope="module")
def reference(untrained_ckpt, tmp_path_factory):
    """Each command's uninterrupted run, made once (in this process)."""
    cache: dict[str, Path] = {}

    def get(cmd: str) -> Path:
        if cmd not in cache:
            d = tmp_path_factory.mktemp(f"ref-{cmd}")
            assert main(_argv(cmd, untrained_ckpt, d)) == 0
            cache[cmd] = d
        return cache[cmd]
    return get


def _crash(argv: list[str], fault: str) -> None:
    env = {**os.environ, FAULT_ENV: fault, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-m", "robustmaxup", *argv], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 137, (fault, proc.returncode, proc.stderr[-2000:])


def _without(d: dict, keys=TIMING_KEYS | {"config", "outputs", "sessions"}) -> dict:
    """``d`` less ``keys``, and less the time its provenance was taken."""
    out = {k: v for k, v in d.items() if k not in keys}
    if isinstance(out.get("provenance"), dict):
        out["provenance"] = {k: v for k, v in out["provenance"].items() if k != "time"}
    return out


def _config(d: dict) -> dict:
    return {k: v for k, v in (d.get("config") or {}).items()
            if k not in ("out", "resume", "save_adv", "provenance", "sessions")}  # sessions: one per call


def _same_smoothing(ref: Path, got: Path) -> None:
    strip = lambda p: [l.rsplit("\t", 1)[0] for l in p.read_text().splitlines()]  # noqa: E731
    assert strip(got / "o.tsv") == strip(ref / "o.tsv")
    a, b = (json.loads((d / "o.tsv.json").read_text()) for d in (ref, got))
    assert _without(a) == _without(b) and _config(a) == _config(b)
    assert b["complete"] and b["rows"] == 3
    # the interrupted call (once it had written a sidecar) and the resumed one
    assert [s["rows_before"] for s in a["sessions"]] == [0] and b["sessions"][0]["rows_before"] == 0
    assert len(b["sessions"]) in (1, 2) and b["sessions"][-1]["rows_before"] <= 3  # 3: killed after the rows


def _same_attack(ref: Path, got: Path) -> None:
    assert (got / "a.tsv").read_bytes() == (ref / "a.tsv").read_bytes()
    a, b = (json.loads((d / "a.json").read_text()) for d in (ref, got))
    assert _without(a) == _without(b) and _config(a) == _config(b)
    xa, xb = (torch.load(d / "adv.pt", weights_only=True) for d in (ref, got))
    assert torch.equal(xa["x_adv"], xb["x_adv"]) and torch.equal(xa["robust"], xb["robust"])


def _metrics(run: Path) -> list[dict]:
    return [_without(json.loads(line), TIMING_KEYS) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_train(ref: Path, got: Path) -> None:
    ref, got = ref / "run", got / "run"
    assert _metrics(got) == _metrics(ref) and [m["epoch"] for m in _metrics(got)] == [1, 2]
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(d / name, weights_only=True) for d in (ref, got))
        for k, v in a["model"].items():
            assert torch.equal(v, b["model"][k]), (name, k)
        assert [_without(m) for m in a["history"]] == [_without(m) for m in b["history"]]
        assert (a["epoch"], a["best"]) == (b["epoch"], b["best"])
    sa, sb = (torch.load(d / "last.pt", weights_only=True)["optimizer"]["state"] for d in (ref, got))
    assert all(torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"]) for k in sa)
    a, b = (json.loads((d / "config.json").read_text()) for d in (ref, got))
    assert _config({"config": a}) == _config({"config": b})


CHECKS = {"certify": _same_smoothing, "predict": _same_smoothing, "attack": _same_attack,
          "train": _same_train}


@pytest.mark.parametrize("cmd, point", CASES)
def test_kill_at_a_write_boundary_then_resume_equals_an_uninterrupted_run(cmd, point, untrained_ckpt,
                                                                           reference, tmp_path, capsys):
    argv = _argv(cmd, untrained_ckpt, tmp_path)
    _crash(argv, point)
    assert main(argv + ["--resume"]) == 0, capsys.readouterr().err
    CHECKS[cmd](reference(cmd), tmp_path)
    # nothing left behind: no temporary file, no state file, no lock file
    names = sorted(p.name for p in tmp_path.rglob("*"))
    assert names == sorted(p.name for p in reference(cmd).rglob("*")), names


def test_every_fault_point_in_the_source_is_in_the_matrix():
    """A new write boundary gets a fault point; a new fault point gets a kill-and-resume case."""
    import re

    import robustmaxup

    used = set()
    for path in Path(robustmaxup.__file__).parent.rglob("*.py"):
        for name in re.findall(r'fault_point\(f?"([^"]+)"\)', path.read_text()):
            used |= {name.replace("{command}", c) for c in ("certify", "predict")} if "{" in name else {name}
    tested = {p.split(":")[0] for points in POINTS.values() for p in points}
    assert used == tested, (used - tested, tested - used)
