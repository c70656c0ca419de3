"""Two real processes writing one output: exactly one proceeds; the other fails with one line,
touching nothing, and the first one's output equals a solo run's.

Deterministic, not timing luck: the first process (a subprocess) is paused at a named point
while it holds its lock (``ROBUSTMAXUP_PAUSE``, :mod:`robustmaxup.runtime.faults`); the second
runs in this process meanwhile; then the first is released.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustmaxup.checkpoints import build_model_for, save_checkpoint
from robustmaxup.cli import main
from robustmaxup.runtime.faults import PAUSE_ENV

CERTIFY = ["--dataset", "digits", "--n0", "10", "--n", "100", "--batch", "100", "--max", "3",
           "--quiet", "--device", "cpu"]
TRAIN = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1", "--max-train", "200",
         "--max-eval", "30", "--batch", "50", "--lr", "0.05", "--quiet", "--device", "cpu"]
ATTACK = ["--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "2",
          "--n-examples", "4", "--batch", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def cks(tmp_path_factory) -> tuple[str, str]:
    """Two checkpoints of two different models, side by side."""
    d = tmp_path_factory.mktemp("cks")
    paths = []
    for i, name in enumerate(("gauss.pt", "maxup.pt")):
        torch.manual_seed(i)
        save_checkpoint(d / name, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                                   "model": build_model_for("digits_cnn", "digits").state_dict(),
                                   "method": "gaussian", "hparams": {"sigma": 0.25}, "epoch": 1})
        paths.append(str(d / name))
    return paths[0], paths[1]


class Paused:
    """A subprocess running ``robustmaxup argv`` in ``cwd``, paused at ``point`` until released."""

    def __init__(self, argv: list[str], point: str, cwd: Path) -> None:
        self.flag = cwd / f".pause-{point}"
        env = {**os.environ, PAUSE_ENV: f"{point}={self.flag}",
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        self.proc = subprocess.Popen([sys.executable, "-m", "robustmaxup", *argv], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not self.flag.exists():
            assert self.proc.poll() is None, self.proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first process never reached its pause point"
            time.sleep(0.05)

    def release(self) -> str:
        self.flag.unlink()
        _, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, err[-2000:]
        return err


def _tree(d: Path, skip: str = ".pause") -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*")) if not p.name.startswith(skip)}


def _fails_one_line(argv: list[str], capsys, needle: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err


def _rows(path: Path) -> list[str]:
    return [line.rsplit("\t", 1)[0] for line in path.read_text().splitlines()]


def test_two_certify_runs_on_one_output(cks, tmp_path, monkeypatch, capsys):
    """Default names in one folder: the same model twice collides (one fails cleanly), two
    models side by side do not (their default names carry the checkpoint's name)."""
    gauss, maxup = cks
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    first = Paused(["certify", gauss, *CERTIFY], "certify.header", work)  # holds the locked TSV
    out = work / "certify_gauss_test_sigma0.25.tsv"
    assert out.exists()
    before = _tree(work)
    _fails_one_line(["certify", gauss, *CERTIFY], capsys, "already exists")
    _fails_one_line(["certify", gauss, *CERTIFY, "--resume"], capsys, "another run")
    assert _tree(work) == before
    assert main(["certify", maxup, *CERTIFY]) == 0  # another model: its own default output
    assert (work / "certify_maxup_test_sigma0.25.tsv").exists()
    first.release()
    assert main(["certify", gauss, *CERTIFY, "--out", str(tmp_path / "solo.tsv")]) == 0
    assert _rows(out) == _rows(tmp_path / "solo.tsv") and len(_rows(out)) == 4


def test_two_trainings_into_one_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    first = Paused(TRAIN + ["--out", str(run)], "train.locked", tmp_path)  # holds the run's lock
    before = _tree(tmp_path)
    _fails_one_line(TRAIN + ["--out", str(run)], capsys, "in use by another run")
    _fails_one_line(TRAIN + ["--out", str(run), "--resume"], capsys, "in use by another run")
    assert _tree(tmp_path) == before
    first.release()
    assert main(TRAIN + ["--out", str(tmp_path / "solo")]) == 0
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (run, tmp_path / "solo"))
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "solo").iterdir())
    # once the first run is gone its lock is free: the directory resumes (nothing left to do)
    assert main(TRAIN + ["--out", str(run), "--resume"]) == 0


def test_two_attacks_on_one_output(cks, tmp_path, capsys):
    gauss, _ = cks
    argv = ["attack", gauss, *ATTACK, "--out", str(tmp_path / "a.json")]
    first = Paused(argv, "attack.locked", tmp_path)
    before = _tree(tmp_path)
    _fails_one_line(argv, capsys, "in use by another run")
    _fails_one_line(argv + ["--resume"], capsys, "in use by another run")
    assert _tree(tmp_path) == before
    first.release()
    assert main(["attack", gauss, *ATTACK, "--out", str(tmp_path / "solo.json")]) == 0
    assert (tmp_path / "a.tsv").read_bytes() == (tmp_path / "solo.tsv").read_bytes()
    assert not (tmp_path / "a.json.lock").exists() and not (tmp_path / "a.json.state.pt").exists()
