"""``runtime.progress.Progress``: a bar on a terminal, periodic log lines with a rate and an ETA
off one (a batch job's log), nothing when disabled; and the lines ``certify`` and ``attack``
write through it."""

from __future__ import annotations

import logging

import pytest

from robustmaxup.cli import main
from robustmaxup.runtime.progress import Progress, format_duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _run(clock: Clock, step: float, total: int = 100, terminal: bool = False, first: float | None = None,
         **kw) -> Progress:
    """``total`` updates of one item, ``step`` seconds apart (the first one ``first``)."""
    with Progress(total, desc="certify", unit="img", terminal=terminal, clock=clock, **kw) as bar:
        for i in range(total):
            clock.t += first if i == 0 and first is not None else step
            bar.update(1)
    return bar


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("certify:")]


def test_off_a_terminal_lines_come_after_first_after_then_every_period(caplog):
    """A 30 s first item (warm-up), then 2 s per item: the first line at item 5, the next ones
    60 s (30 items) apart, none at the end. The rate skips the warm-up: items 2..5 in 8 s."""
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        bar = _run(Clock(), 2.0, first=30.0, first_after=5, every=60.0)
    lines = _lines(caplog)
    assert [line.split(" img")[0] for line in lines] == ["certify: 5/100", "certify: 35/100",
                                                         "certify: 65/100", "certify: 95/100"]
    assert lines[0] == "certify: 5/100 img (5%), 2 s/img, ETA 3m 10s"
    assert bar.lines == 4


def test_the_default_first_line_waits_a_period_and_the_rate_can_count_from_the_start(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with Progress(10, desc="certify", unit="img", terminal=False, clock=clock, every=60.0,
                      skip_first=False) as bar:
            clock.t += 50.0               # a slow first item: counted with skip_first=False
            bar.update(1)
            clock.t += 10.0
            bar.update(1, note="robust accuracy so far 50.0%")
    assert _lines(caplog) == ["certify: 2/10 img (20%), 30 s/img, ETA 4m 00s, robust accuracy so far 50.0%"]


def test_disabled_shows_nothing_and_a_terminal_gets_a_bar_not_log_lines(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        _run(Clock(), 100.0, total=5, first_after=1, enabled=False)
        bar = _run(Clock(), 100.0, total=5, first_after=1, terminal=True)
    assert _lines(caplog) == [] and bar.lines == 0
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        _run(Clock(), 100.0, total=5, first_after=1)      # every update due, but the last: done
    assert [line.split(" img")[0] for line in _lines(caplog)] == [f"certify: {i}/5" for i in range(1, 5)]
    assert "certify:   0%" in capsys.readouterr().err        # tqdm's bar


def test_a_resumed_run_counts_from_its_initial_items(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        with Progress(100, desc="certify", unit="img", initial=90, first_after=2, terminal=False,
                      clock=clock) as bar:
            for _ in range(3):
                clock.t += 1.0
                bar.update(1)
    assert _lines(caplog) == ["certify: 92/100 img (92%), 1 img/s, ETA 8s"]


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.4, "59s"), (60, "1m 00s"), (3599, "59m 59s"),
                                           (3600, "1h 00m"), (7322, "2h 02m"), (90000, "1d 01h")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_certify_and_attack_write_progress_lines_to_a_log(digits_checkpoint, tmp_path, capsys):
    """stderr under pytest is not a terminal: the commands log progress lines, not a bar."""
    assert main(["certify", str(digits_checkpoint), "--dataset", "digits", "--n0", "10", "--n", "50",
                 "--max", "8", "--out", str(tmp_path / "c.tsv")]) == 0
    assert "certify: 5/8 img (62%), " in capsys.readouterr().err
    assert main(["attack", str(digits_checkpoint), "--dataset", "digits", "--attack", "pgd", "--eps", "0.1",
                 "--steps", "2", "--n-examples", "12", "--batch", "6", "--out", str(tmp_path / "a.json")]) == 0
    err = capsys.readouterr().err
    assert "attack pgd: 6/12 img (50%), " in err and "robust accuracy so far" in err
