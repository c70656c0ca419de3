"""Details of runtime (checks, seeds, limits, text, faults, interrupts, records, io) and of
checkpoints that the other tests left open: each test kills a mutant that survived the
mutation audit of 2026-11-24 (results.txt of that audit maps tests to mutants)."""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmaxup import checkpoints
from robustmaxup.checkpoints import (
    FORMAT, MAX_CHANNELS, MAX_CLASSES, build_model_for, check_schema, describe, export_checkpoint,
    load_model, read_checkpoint, resolve_sigma, save_checkpoint,
)
from robustmaxup.errors import UserError
from robustmaxup.runtime import faults, limits, records
from robustmaxup.runtime import io as io_mod
from robustmaxup.runtime.checks import (
    FieldError, check_alpha, check_class_indices, check_int, check_positive, check_range,
    parse_fraction,
)
from robustmaxup.runtime.interrupts import Terminated, sigterm_interrupts
from robustmaxup.runtime.io import (
    FileLock, atomic_torch_save, atomic_write_text, check_input_path, check_not_inputs,
    check_output_path, check_path_text, create_exclusive, file_label, open_locked, same_file,
)
from robustmaxup.runtime.limits import batch_bytes
from robustmaxup.runtime.records import check_resume
from robustmaxup.runtime.seeds import derive_seed, make_generator, seed_everything, stream_seed
from robustmaxup.runtime.text import SafeLogFilter, error_summary, warn_once


# --- runtime.checks ------------------------------------------------------------------------------

def test_check_range_closed_upper_bound_admits_the_bound():
    """A closed upper bound is part of the interval (``>`` not ``>=``)."""
    assert check_range("p", 1.0, 0.0, 1.0) == 1.0
    assert check_range("p", 1, 0, 1) == 1


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (None, None), (0.0, None), (None, 1.0), (0.0, math.inf)])
def test_check_range_refuses_non_finite_whatever_the_bounds(value, lo, hi):
    """NaN compares false with every bound and ``inf`` passes a missing or infinite one, so both
    are refused before the interval test, as the docstring's "finite" promises."""
    with pytest.raises(FieldError, match="^p must be a finite number"):
        check_range("p", value, lo, hi)


@pytest.mark.parametrize("check", [
    lambda: check_int("n0", 10**400, minimum=1, maximum=10**9),
    lambda: check_int("n0", -10**400, minimum=1),
    lambda: check_range("p", 10**400, 0, 1),
    lambda: check_positive("sigma", -10**400),
])
def test_integers_too_big_for_a_float_are_a_field_error(check):
    """``math.isfinite(10**400)`` overflows; the checks answer with a FieldError, not a crash."""
    with pytest.raises(FieldError):
        check()


def test_integers_too_big_for_a_float_pass_where_unbounded():
    assert check_int("n0", 10**400) == 10**400 and check_positive("sigma", 10**400) == 10**400


def test_check_positive_zero_only_with_allow_zero():
    """0 is refused by default and accepted with ``allow_zero``; negatives never are."""
    assert check_positive("sigma", 0.0, allow_zero=True) == 0.0
    assert check_positive("sigma", 0.25) == 0.25
    with pytest.raises(FieldError, match=r"^sigma must be > 0"):
        check_positive("sigma", 0.0)
    with pytest.raises(FieldError, match=r"^sigma must be >= 0"):
        check_positive("sigma", -0.5, allow_zero=True)


@pytest.mark.parametrize("labels, ok", [([0, 1, 2], True), ([0, 3], False), ([-1, 0], False), ([], True)])
def test_check_class_indices_half_open_range(labels, ok):
    """Class indices must lie in ``[0, num_classes)``: ``num_classes`` and -1 are refused."""
    t = torch.tensor(labels, dtype=torch.long)
    if ok:
        check_class_indices("labels", t, 3)
    else:
        with pytest.raises(FieldError, match=r"^labels must be class indices in \[0, 3\)"):
            check_class_indices("labels", t, 3)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_check_alpha_refuses_both_ends(alpha):
    """alpha is a probability in the open interval (0, 1)."""
    with pytest.raises(FieldError, match=r"^alpha must be a failure probability in \(0, 1\), got .*; e\.g\. alpha=0\.001$"):
        check_alpha(alpha)


@pytest.mark.parametrize("text", ["inf", "-inf", "1e999", "nan"])
def test_parse_fraction_refuses_non_finite(text):
    """A number that parses but is not finite is refused."""
    with pytest.raises(FieldError, match="^eps must be finite"):
        parse_fraction(text, "eps")


def test_parse_fraction_refuses_division_by_zero():
    """``1/0`` is a one-line FieldError, not a ZeroDivisionError."""
    with pytest.raises(FieldError, match="^eps cannot be read as a number"):
        parse_fraction("1/0", "eps")
    assert parse_fraction(" 8/255 ", "eps") == pytest.approx(8 / 255)


# --- runtime.seeds -------------------------------------------------------------------------------

def test_derived_seeds_are_63_bit():
    """Every derived seed fits 63 bits (a non-negative int64), as torch and numpy want."""
    seeds = [derive_seed(i, "x") for i in range(64)]
    assert all(0 <= s < 2**63 for s in seeds)
    assert max(seeds) >= 2**62  # the whole 63-bit range is used, not a smaller one


def test_stream_seed_refuses_an_unknown_stream():
    """Only streams documented in STREAMS may be drawn from."""
    with pytest.raises(KeyError, match="unknown seed stream"):
        stream_seed(0, "train.nosuch")


@pytest.mark.parametrize("seed", [5, 2**40 + 5, 2**63 - 1])
def test_make_generator_keeps_all_63_bits(seed):
    """Seeds beyond 32 bits are used whole: two seeds that agree in their low bits differ."""
    assert make_generator(seed).initial_seed() == seed
    assert make_generator(-1).initial_seed() == 2**63 - 1


def test_seed_everything_seeds_torch_numpy_and_python_with_the_seed_itself():
    """``seed_everything(s)`` makes the global RNGs draw what a fresh RNG seeded with ``s`` draws."""
    state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            seed_everything(1234)
            got = torch.rand(4), np.random.rand(2), random.random()
            assert torch.equal(got[0], torch.rand(4, generator=make_generator(1234)))
        assert np.array_equal(got[1], np.random.RandomState(1234).rand(2))
        assert got[2] == random.Random(1234).random()
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


# --- runtime.limits ------------------------------------------------------------------------------

def _fake_root(monkeypatch, tmp_path, files):
    """Make runtime.limits read ``/proc`` and ``/sys`` files from ``tmp_path`` instead."""
    for name, text in files.items():
        target = tmp_path / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    monkeypatch.setattr(limits, "Path", lambda p: Path(str(tmp_path) + str(p)))


def test_batch_bytes_counts_the_batch_plus_its_activation_allowance():
    """The default bound is the input bytes times (1 + ACTIVATION_FACTOR)."""
    assert batch_bytes(2, (3, 4)) == 2 * 12 * 4 * (1 + limits.ACTIVATION_FACTOR)
    assert batch_bytes(2, (3, 4), bytes_per_value=2, factor=1) == 48


def test_check_memory_refuses_exactly_what_does_not_fit(monkeypatch):
    """``need > free`` fails, ``need == free`` passes; unknown free memory never fails."""
    monkeypatch.setattr(limits, "available_memory", lambda device: 1000)
    limits.check_memory("batch_size", 1000, "cpu")
    with pytest.raises(FieldError, match="^batch_size needs at least"):
        limits.check_memory("batch_size", 1001, "cpu")
    monkeypatch.setattr(limits, "available_memory", lambda device: None)
    limits.check_memory("batch_size", 10**18, "cpu")


def test_available_memory_reads_memavailable_in_kib(monkeypatch, tmp_path):
    """``MemAvailable`` is in KiB; without a cgroup limit it is the answer."""
    _fake_root(monkeypatch, tmp_path, {"/proc/meminfo": "MemTotal: 9000 kB\nMemAvailable: 1000 kB\n",
                                       "/sys/fs/cgroup/memory.max": "max\n"})
    assert limits.available_memory("cpu") == 1000 * 1024


def test_available_memory_is_the_smaller_of_host_and_cgroup(monkeypatch, tmp_path):
    """A cgroup limit counts what is left of it (limit - usage), and the tighter bound wins."""
    _fake_root(monkeypatch, tmp_path, {"/proc/meminfo": "MemAvailable: 1000 kB\n",
                                       "/sys/fs/cgroup/memory.max": "300000\n",
                                       "/sys/fs/cgroup/memory.current": "100000\n"})
    assert limits._cgroup_free() == 200000
    assert limits.available_memory("cpu") == 200000
    _fake_root(monkeypatch, tmp_path, {"/sys/fs/cgroup/memory.max": "9000000\n",
                                       "/sys/fs/cgroup/memory.current": "100000\n"})
    assert limits.available_memory("cpu") == 1000 * 1024


def test_cgroup_free_is_never_negative(monkeypatch, tmp_path):
    """Usage above the limit (it happens transiently) means nothing is free, not a negative."""
    _fake_root(monkeypatch, tmp_path, {"/sys/fs/cgroup/memory.max": "1000\n",
                                       "/sys/fs/cgroup/memory.current": "5000\n"})
    assert limits._cgroup_free() == 0


# --- runtime.text --------------------------------------------------------------------------------

def test_error_summary_cuts_at_exactly_the_limit():
    """A long message is cut to ``limit`` characters, the last being the ellipsis."""
    text = error_summary(ValueError("x" * 300), limit=240)
    assert len(text) == 240 and text.endswith("…")
    assert error_summary(ValueError("y" * 240), limit=240) == "y" * 240


def test_warn_once_warns_once_per_message(caplog):
    """The same message twice is logged once; another message is logged too."""
    logger = logging.getLogger("robustmaxup.test_runtime_details")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        for _ in range(3):
            warn_once(logger, "details: same thing 7f3a")
        warn_once(logger, "details: other thing 7f3a")
    assert [r.getMessage() for r in caplog.records] == ["details: same thing 7f3a",
                                                        "details: other thing 7f3a"]


def test_safe_log_filter_keeps_tabs_and_escapes_the_rest():
    """Log records keep tabs (TSV-like messages) but escape newlines and ESC."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "a\t%s", ("b\n\x1b[2J",), None)
    assert SafeLogFilter().filter(record)
    assert record.getMessage() == "a\tb\\n\\x1b[2J"


# --- runtime.faults and runtime.interrupts --------------------------------------------------------

def test_fault_spec_counts_default_to_the_first_time():
    """``name`` alone (or with a count that is not a number) fails the first time it is reached."""
    assert faults._faults("a, b:3,c:x,,d:") == {"a": 1, "b": 3, "c": 1, "d": 1}


def test_fault_point_ends_the_process_like_kill_9(tmp_path):
    """A fault exits with 137 at once: no ``finally`` runs and nothing after it is printed."""
    script = ("from robustmaxup.runtime.faults import fault_point\n"
              "try:\n    fault_point('x.row')\n    print('passed 1')\n    fault_point('x.row')\n"
              "    print('passed 2')\nfinally:\n    print('finally ran')\n")
    env = {**os.environ, faults.FAULT_ENV: "x.row:2", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(faults.PAUSE_ENV, None)
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 137
    assert p.stdout.split() == ["passed", "1"]


def test_pause_happens_only_the_first_time_a_point_is_reached(monkeypatch, tmp_path):
    """A pause point waits once (creating its flag file); later visits pass straight through."""
    flag = tmp_path / "paused"
    monkeypatch.delenv(faults.FAULT_ENV, raising=False)
    monkeypatch.setenv(faults.PAUSE_ENV, f"x.row={flag}")
    monkeypatch.setattr(faults, "_reached", Counter())
    monkeypatch.setattr(faults, "PAUSE_LIMIT_S", 0.05)
    faults.fault_point("x.row")
    assert flag.read_text().strip() == str(os.getpid())
    flag.unlink()
    faults.fault_point("x.row")
    faults.fault_point("x.other")
    assert not flag.exists()


def test_sigterm_interrupts_raises_inside_and_restores_the_handler_after():
    """SIGTERM raises Terminated inside the block; the previous handler is back afterwards."""
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_interrupts():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_interrupts_outside_the_main_thread_does_nothing():
    """In a worker thread (where no handler can be set) the block just runs."""
    done = []

    def work():
        with sigterm_interrupts():
            done.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert done == [before]


# --- runtime.records -----------------------------------------------------------------------------

@pytest.mark.parametrize("porcelain, dirty", [(" M robustmaxup/x.py\n", True), ("", False)])
def test_git_dirty_reads_the_porcelain_status(monkeypatch, porcelain, dirty):
    """Any changed tracked file makes the tree dirty; an empty status is clean."""
    monkeypatch.setattr(records, "_git", lambda *args: porcelain)
    assert records.git_dirty() is dirty


@pytest.mark.parametrize("flag, dirty", [("1", True), ("0", False), ("", None), ("yes", None)])
def test_git_dirty_outside_git_reads_the_environment(monkeypatch, flag, dirty):
    """Outside git, ROBUSTMAXUP_GIT_DIRTY=1/0 says dirty/clean; anything else is unknown."""
    monkeypatch.setattr(records, "_git", lambda *args: None)
    monkeypatch.setenv(records.GIT_DIRTY_ENV, flag)
    assert records.git_dirty() is dirty


def test_failed_git_command_is_not_a_commit(monkeypatch):
    """git exiting non-zero (not a repository) falls back to the environment, its output unused."""
    def fake_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 128, stdout="fatal: not a git repository\n", stderr="")

    monkeypatch.setattr(records.subprocess, "run", fake_run)
    monkeypatch.setenv(records.GIT_SHA_ENV, "abc123")
    assert records.git_sha() == "abc123"


def test_a_package_inside_another_repository_does_not_take_its_commit(tmp_path, monkeypatch):
    """A copy or install of the package that sits inside some other git repository (not at its
    top) records no commit from it: it falls back to ``$ROBUSTMAXUP_GIT_SHA``."""
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no git")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True, env=env)
    package = tmp_path / "site" / "robustmaxup"
    package.mkdir(parents=True)
    monkeypatch.setattr(records.robustmaxup, "__file__", str(package / "__init__.py"))
    monkeypatch.setenv(records.GIT_SHA_ENV, "feed")
    monkeypatch.delenv(records.GIT_DIRTY_ENV, raising=False)
    assert records.git_sha() == "feed" and records.git_dirty() is None
    monkeypatch.setattr(records.robustmaxup, "__file__", str(tmp_path / "robustmaxup" / "__init__.py"))
    records._tree_state.cache_clear()  # git is asked once per process; this test moves the package
    assert records.git_sha() != "feed" and len(records.git_sha()) == 40  # at the top: asked


def test_provenance_records_the_dirty_flag(monkeypatch):
    """A sidecar says whether the tree it was made from had uncommitted changes."""
    monkeypatch.setattr(records, "git_dirty", lambda: True)
    assert records.provenance()["git_dirty"] is True


def test_check_resume_ignores_keys_the_saved_run_does_not_record():
    """A setting an older output did not record cannot be compared, so it does not block."""
    check_resume({"n": 10}, {"n": 10, "batch": 7}, ["n", "batch"], what="r.tsv")


def test_check_resume_refuses_a_setting_missing_now():
    """A recorded setting the current run lacks is a difference (was 5, now None)."""
    with pytest.raises(UserError, match=r"cannot resume r\.tsv: .*m \(5, now None\)"):
        check_resume({"n": 10, "m": 5}, {"n": 10}, ["n", "m"], what="r.tsv")


def test_checkpoint_record_is_the_resolved_path_and_its_hash(monkeypatch, tmp_path):
    """The sidecar names the checkpoint by absolute path and its SHA-256."""
    (tmp_path / "a.pt").write_bytes(b"weights" * 1000)
    monkeypatch.chdir(tmp_path)
    rec = records.checkpoint_record("a.pt", {"arch": "x"})
    assert rec == {"checkpoint": str((tmp_path / "a.pt").resolve()),
                   "checkpoint_sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
                   "checkpoint_meta": {"arch": "x"}}


# --- runtime.io ----------------------------------------------------------------------------------

def test_atomic_write_gives_the_usual_permissions(tmp_path):
    """The final file gets 0666 & ~umask like any other, not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == 0o644


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc")
@pytest.mark.parametrize("exclusive", [False, True])
def test_atomic_write_flushes_the_data_before_the_name_and_then_the_folder(tmp_path, monkeypatch,
                                                                             exclusive):
    """Durability order: fsync the temporary file, put it in place, fsync the folder, so a power
    cut leaves the old file or the whole new one."""
    events, real_fsync, real_replace, real_link = [], os.fsync, os.replace, os.link

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(kind, real):
        def wrapped(a, b, *args, **kwargs):
            events.append((kind, str(b)))
            return real(a, b, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(io_mod.os, "fsync", fsync)
    monkeypatch.setattr(io_mod.os, "replace", rename("replace", real_replace))
    monkeypatch.setattr(io_mod.os, "link", rename("link", real_link))
    out = tmp_path / "out.json"
    with io_mod.atomic_path(out, exclusive=exclusive) as tmp:
        tmp.write_text("{}\n")
    assert [e[0] for e in events] == ["fsync", "link" if exclusive else "replace", "fsync"]
    assert events[0][1] == str(tmp) and events[1][1] == str(out) and events[2][1] == str(tmp_path)
    assert out.read_text() == "{}\n"


def test_an_output_hard_linked_to_an_input_is_that_input(tmp_path):
    """A hard link under another name is still the input file (compared by inode)."""
    src, link = tmp_path / "model.pt", tmp_path / "other" / "copy.pt"
    src.write_bytes(b"x")
    link.parent.mkdir()
    os.link(src, link)
    assert same_file(src, link)
    with pytest.raises(FieldError, match="^out .* is the checkpoint, an input of this command"):
        check_not_inputs([("out", link)], [("the checkpoint", src)])


@pytest.mark.parametrize("path, root", [
    ("/dev/shm/robustmaxup-details.tsv", None), ("/sysroot-robustmaxup/out.tsv", None),
    ("/devices-robustmaxup/out.tsv", None), ("/process-robustmaxup/out.tsv", None),
    ("/sys/kernel/out.tsv", "/sys"), ("/proc", "/proc"), ("/dev/out.tsv", "/dev"),
])
def test_only_true_special_file_systems_are_refused(path, root):
    """``/dev/shm`` and names that merely start like ``/sys``/``/dev``/``/proc`` are allowed."""
    if path.startswith("/dev/shm") and os.path.realpath("/dev/shm") != "/dev/shm":
        pytest.skip("/dev/shm is a link here")
    assert io_mod._special_root(path) == root


def test_path_length_limit_is_4095_bytes():
    """A path of 4095 bytes is accepted, one of 4096 refused."""
    base = "/" + "/".join(["d" * 200] * 20)
    ok = base + "/" + "e" * (4095 - len(base) - 1)
    assert len(ok) == 4095 and check_path_text(ok) == Path(ok)
    with pytest.raises(FieldError, match="^out .* is too long a path"):
        check_path_text(ok + "e")


def test_a_name_of_exactly_name_max_bytes_is_accepted(tmp_path):
    """``NAME_MAX`` bytes fit; one more does not."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    assert check_path_text(tmp_path / ("n" * limit)) == tmp_path / ("n" * limit)
    with pytest.raises(FieldError, match="has a name too long"):
        check_path_text(tmp_path / ("n" * (limit + 1)))


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    """``kind="dir"`` refuses an existing file."""
    (tmp_path / "f").write_text("x")
    with pytest.raises(FieldError, match="^out .* exists and is not a directory"):
        check_output_path(tmp_path / "f", kind="dir")
    assert check_output_path(tmp_path, kind="dir") == tmp_path


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_input_that_is_a_device_is_refused():
    """An input file must be a regular file, not a device, pipe or socket."""
    with pytest.raises(UserError, match="^checkpoint /dev/null is not a regular file"):
        check_input_path("/dev/null", "checkpoint")
    assert check_input_path("/dev/null", "data", kind="any") == Path("/dev/null")


def test_file_lock_is_exclusive_and_reentrant(tmp_path):
    """A second holder is refused while the first holds the lock; the holder may re-acquire."""
    path = tmp_path / ".lock"
    first = FileLock(path, what="run directory r").acquire()
    assert first.acquire() is first and first.held
    with pytest.raises(UserError, match="^run directory r is in use by another run"):
        FileLock(path, what="run directory r").acquire()
    with pytest.raises(UserError, match="is being written by another run"):
        open_locked(path, append=True)
    first.release()
    assert not path.exists() and not first.held
    second = FileLock(path, what="run directory r").acquire()
    second.release(remove=False)
    assert path.exists()


def test_file_lock_retries_when_the_file_was_replaced_under_it(monkeypatch, tmp_path):
    """If the previous holder removed the lock file between our open and our lock, the lock is
    taken on the file now at the path, not on the unlinked one."""
    path = tmp_path / ".lock"
    real, calls = io_mod._lock_or_fail, []

    def racing_lock(fd, message):
        real(fd, message)
        if not calls:
            calls.append(fd)
            os.unlink(path)  # the previous holder releases (removes) it just now
            path.write_text("")

    monkeypatch.setattr(io_mod, "_lock_or_fail", racing_lock)
    lock = FileLock(path, what="run r").acquire()
    try:
        held = os.fstat(lock._fd)
        assert (held.st_dev, held.st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)
        assert path.read_text() == f"{os.getpid()}\n"
    finally:
        lock.release()


def test_file_label_prefixes_generic_checkpoint_names_with_their_folder(tmp_path):
    """``runs/maxup/last.pt`` -> ``maxup-last``; a specific name stays as it is."""
    assert file_label(tmp_path / "maxup" / "last.pt") == "maxup-last"
    assert file_label(tmp_path / "maxup" / "c10_maxup.pt") == "c10_maxup"


def test_exclusive_write_without_hard_links_still_never_replaces(monkeypatch, tmp_path):
    """On a file system without hard links the exclusive write checks, then renames."""
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(io_mod.os, "link", no_links)
    path = tmp_path / "out.pt"
    path.write_bytes(b"old")
    with pytest.raises(UserError, match="already exists"):
        atomic_torch_save({"a": 1}, path, exclusive=True)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pt"]
    atomic_torch_save({"a": 1}, tmp_path / "new.pt", exclusive=True)
    assert torch.load(tmp_path / "new.pt") == {"a": 1}


# --- checkpoints ---------------------------------------------------------------------------------

def _meta(**changes):
    ckpt = {"format": FORMAT, "arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
            "model": {"w": torch.zeros(1)}}
    ckpt.update(changes)
    return ckpt


@pytest.mark.parametrize("changes", [
    {"num_classes": 10}, {"num_classes": 1}, {"num_classes": MAX_CLASSES},
    {"in_channels": MAX_CHANNELS}, {"in_channels": 3, "mean": [0.5], "std": [0.2]},
    {"in_channels": 3, "mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]},
    {"hparams": {"sigma": 0.0}}, {"epoch": 0},
    {"classes": [str(i) for i in range(10)]},
])
def test_schema_accepts_its_boundaries(changes):
    """The edges of every documented range are inside the schema."""
    assert check_schema(_meta(**changes)) is not None


@pytest.mark.parametrize("changes, key", [
    ({"num_classes": 0}, "num_classes"), ({"num_classes": MAX_CLASSES + 1}, "num_classes"),
    ({"in_channels": 0}, "in_channels"), ({"in_channels": MAX_CHANNELS + 1}, "in_channels"),
    ({"in_channels": 3, "mean": [0.1, 0.2]}, "mean"),
    ({"std": [0.0]}, "std"), ({"std": [-1.0]}, "std"),
    ({"classes": ["a"] * 10}, "classes"), ({"classes": ["a", "b"]}, "classes"),
    ({"hparams": {"sigma": -0.25}}, "hparams sigma"), ({"epoch": -1}, "epoch"),
    ({"model": {"w": 1.0}}, "model entry"), ({"model": {0: torch.zeros(1)}}, "model entry"),
    ({"model": {}}, "model"),
])
def test_schema_refuses_just_outside_its_ranges(changes, key):
    """One step outside a documented range is refused, naming the key."""
    with pytest.raises(UserError, match=f"declares {key} "):
        check_schema(_meta(**changes))


@pytest.mark.parametrize("missing", ["arch", "dataset", "num_classes", "model"])
def test_save_checkpoint_refuses_a_dict_missing_a_required_key(tmp_path, missing):
    """A checkpoint that could not be rebuilt is never written."""
    ckpt = _meta()
    del ckpt[missing]
    with pytest.raises(ValueError, match=f"missing '{missing}'"):
        save_checkpoint(tmp_path / "c.pt", ckpt)
    assert not list(tmp_path.iterdir())


def test_save_checkpoint_stamps_the_git_commit_unless_given(monkeypatch, tmp_path):
    """Provenance: the source commit is recorded; an explicit one is kept."""
    monkeypatch.setattr(checkpoints, "git_sha", lambda: "c0ffee")
    save_checkpoint(tmp_path / "a.pt", _meta())
    save_checkpoint(tmp_path / "b.pt", _meta(git_sha="given"))
    assert torch.load(tmp_path / "a.pt")["git_sha"] == "c0ffee"
    assert torch.load(tmp_path / "b.pt")["git_sha"] == "given"


def test_cohen_metadata_leave_out_the_weights_and_name_the_callers_dataset(tmp_path):
    """A Cohen file of a CIFAR-100 network (its arch defaults to CIFAR-10) loaded for cifar100:
    the metadata hold no tensors and name the dataset the caller chose."""
    net = build_model_for("cifar_resnet20", "cifar100").net
    path = tmp_path / "cohen.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": {f"1.{k}": v for k, v in net.state_dict().items()}},
               path)
    assert "net_state" not in describe(read_checkpoint(path))
    _, meta = load_model(path, dataset="cifar100", num_classes=100)
    assert "net_state" not in meta and meta["dataset"] == "cifar100" and meta["num_classes"] == 100
    assert not any(isinstance(v, (dict, torch.Tensor)) for k, v in meta.items() if k != "hparams")


def test_export_over_an_existing_file_names_the_out_field(tmp_path, digits_checkpoint):
    """An existing ``out`` is a FieldError on ``out`` (shown as ``--out``), before any reading."""
    out = tmp_path / "taken.pt"
    out.write_bytes(b"keep")
    with pytest.raises(FieldError, match="already exists") as e:
        export_checkpoint(digits_checkpoint, out, "state_dict")
    assert e.value.field == "out" and out.read_bytes() == b"keep"


def test_resolve_sigma_warns_when_the_given_sigma_is_not_the_trained_one(caplog):
    """A σ other than the training σ is allowed, with a warning; the same σ is silent."""
    meta = {"hparams": {"sigma": 0.25}}
    with caplog.at_level(logging.WARNING, logger="robustmaxup.checkpoints"):
        assert resolve_sigma(0.25, meta, verb="certifying", missing_hint="-") == (0.25, "flag")
        assert not caplog.records
        assert resolve_sigma(0.5, meta, verb="certifying", missing_hint="-") == (0.5, "flag")
    assert "trained with sigma 0.25" in caplog.text
    assert resolve_sigma(None, meta, verb="certifying", missing_hint="-") == (0.25, "checkpoint")


@pytest.mark.parametrize("opener", [lambda p: create_exclusive(p, what="output"),
                                    lambda p: open_locked(p, append=False, what="output")],
                         ids=["create_exclusive", "open_locked"])
def test_exclusive_create_refuses_an_existing_file_and_keeps_it(tmp_path, opener):
    """A new output must not exist yet (O_EXCL); an existing one is neither truncated nor opened."""
    path = tmp_path / "r.tsv"
    path.write_text("rows\n")
    with pytest.raises(UserError, match="^output .* already exists"):
        opener(path)
    assert path.read_text() == "rows\n"
    with opener(tmp_path / "new.tsv") as f:
        f.write("x")
    assert (tmp_path / "new.tsv").read_text() == "x"


@pytest.mark.parametrize("content", [b"arch,dataset\ndigits_cnn,digits\n", b"\x00\x01\x02\x03rest",
                                     b"GIF89a....", b"c__builtin__\neval\n"])
def test_a_file_without_a_torch_header_is_called_corrupt_not_unsafe(tmp_path, content):
    """A file that is neither a zip nor a pickle is refused by its header, before torch.load,
    as "not a torch file" (not as a file that needs code)."""
    path = tmp_path / "c.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is corrupt or not a torch file .*not a zip or pickle header"):
        read_checkpoint(path)
