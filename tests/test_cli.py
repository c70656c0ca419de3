"""The command line as a whole: usage, help texts, pipes, and flags that would otherwise be
silently ignored (each gets one line and exit 2, and no file)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from robustmaxup.cli import main
from robustmaxup.runtime.text import error_summary

FAST = ["--dataset", "digits", "--n0", "20", "--n", "200", "--batch", "100", "--alpha", "0.01",
        "--max", "2", "--device", "cpu", "--quiet"]


def test_bare_command_prints_usage_to_stderr_with_exit_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "usage: robustmaxup <command>" in err
    assert main(["--help"]) == 0 and "usage: robustmaxup <command>" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_into_a_closed_pipe_is_not_a_traceback(argv):
    """``robustmaxup train --help | head -1``: the reader may leave before the help is written;
    here it has left before the command starts, so the first write fails (EPIPE)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "robustmaxup", *argv], stdout=w,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    finally:
        os.close(w)
    assert proc.returncode in (0, 141) and proc.stderr == "", proc.stderr   # argparse may swallow EPIPE


@pytest.mark.parametrize("command", ["train", "certify", "attack", "analyze", "export", "predict"])
def test_help_shows_defaults_only_where_they_say_something(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "(default: False)" not in text
    # a help text that states its own default gets no second one
    assert "training sigma) (default:" not in text and "(default: -1, all)" not in text.replace(
        "(default: -1, all);", "")


@pytest.mark.parametrize("extra, needle", [
    (["--radii", "0.5"], "--radii applies only with --sequential"),
    (["--n-max", "500"], "--n-max applies only with --sequential"),
    (["--sequence", "betting"], "--sequence applies only with --sequential"),
    (["--futility", "unanimous"], "--futility applies only with --sequential"),
    (["--sequential"], "--n is not used with --sequential"),          # FAST gives --n 200
    (["--max", "-2"], "--max must be -1 (all images) or an integer >= 1"),
    (["--sequential", "--n-max", "500", "--radius-tol", "0.01"], "--radius-tol applies when the radius"),
    (["--sequential", "--n-max", "500", "--radii", "0.5", "--radius-tol", "0.01"], "--radius-tol applies"),
    (["--data-root", "/tmp"], "--data-root is not used by digits"),
    (["--cache-dir", "/tmp"], "--cache-dir is not used by digits"),
])
def test_certify_flags_that_would_be_ignored_are_refused(digits_checkpoint, tmp_path, capsys, extra, needle):
    out = tmp_path / "o.tsv"
    argv = ["certify", digits_checkpoint, *FAST, "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("extra, needle", [
    (["--method", "smoothmix", "--mix-step", "4", "--attack-steps", "4"],
     "--mix-step must be smaller than the number of attack steps (4), got 4"),
    (["--method", "pgd_at", "--norm", "L3"], "--norm must be one of Linf, L2, got 'L3'"),
    (["--awp-gamma", "0"], "--awp-gamma must be > 0"),
])
def test_method_errors_name_the_flag(tmp_path, capsys, extra, needle):
    """A method's own check names its field (``mix_step``: the Python API); the CLI shows the flag."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_an_empty_out_is_refused(digits_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["certify", digits_checkpoint, *FAST, "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err and not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_cohens_positional_form_is_translated(command, capsys):
    argv = [command, "cifar10", "models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar", "0.25",
            "out.tsv", "--skip", "20", "--batch", "400"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (f"robustmaxup {command} models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar --dataset "
            "cifar10 --data-root DIR --sigma 0.25 --out out.tsv --skip 20 --batch 400") in err[0]
    assert not os.path.exists("out.tsv")


def test_error_summary_keeps_torch_second_line_and_cuts_long_text():
    e = RuntimeError('Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: "fc.weight".')
    assert error_summary(e) == 'Error(s) in loading state_dict for Net: Missing key(s) in state_dict: "fc.weight".'
    long = error_summary(ValueError("x" * 500), 50)
    assert len(long) == 50 and long.endswith("…")
    assert error_summary(KeyError()) == "KeyError" and "\\x1b" in error_summary(OSError("a\x1b[2Jb"))
