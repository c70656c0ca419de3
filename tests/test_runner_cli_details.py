"""Details of the certification runner and the command line that the end-to-end tests leave
open: the sidecar's every setting, the documented defaults, which settings a resume compares,
sharded runs (one process per rank, simulated in-process), and each flag's config field."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import types
from pathlib import Path

import pytest
import torch

from robustmaxup.certify import Smooth
from robustmaxup.certify import runner
from robustmaxup.certify.runner import (
    SequentialSettings, Settings, SmoothingJob, certify_dataset, default_out, predict_dataset,
)
from robustmaxup.certify.tsv import CERTIFY, PREDICT_SEQUENTIAL, read_rows
from robustmaxup.cli import main
from robustmaxup.data import load_split
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.dist import Dist

from tests.fakes import KilledAt, number_provenance

KW = dict(n0=10, n=100, alpha=0.01, batch_size=100, seed=0, progress=False)


@pytest.fixture(scope="module")
def split():
    return load_split("digits", "test")


def _smooth(sigma: float = 0.25, **kw) -> Smooth:
    torch.manual_seed(0)
    return Smooth(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), 10, sigma, **kw)


def _sidecar(out) -> dict:
    return json.loads(Path(str(out) + ".json").read_text())


class Ordered(torch.nn.Module):
    """A model reporting an output reordering, as NormalizedModel.output_order does."""

    def __init__(self, order):
        super().__init__()
        self.lin = torch.nn.Linear(64, 10)
        self.register_buffer("output_order", torch.tensor(order))

    def forward(self, x):
        return self.lin(x.flatten(1))


# ----------------------------------------------------------------------------- the sidecar
def test_the_sidecar_records_every_setting(split, tmp_path):
    """Hand-known values of a 3-image run: nothing defaulted, nothing taken from the wrong place,
    and a ``record`` entry never replaces a setting."""
    out = tmp_path / "c.tsv"
    smooth = _smooth(0.5, noise_chunk=50)
    certify_dataset(smooth, split, [4, 0, 8], n0=12, n=150, alpha=0.02, batch_size=70, seed=5,
                    images_per_batch=2, out=out, record={"n": 1, "sigma": 9.0, "note": "mine"},
                    progress=False)
    meta = _sidecar(out)
    expect = {"command": "certify", "mode": "certify", "split": "test", "split_size": len(split),
              "indices": [4, 0, 8], "num_selected": 3, "full_split": False, "sigma": 0.5, "n0": 12,
              "n": 150, "alpha": 0.02, "seed": 5, "batch_size": 70, "images_per_batch": 2,
              "noise_chunk": 50, "fold_bn": False, "class_order": None, "world_size": 1,
              "sequential": None, "confidence_sequence": None, "complete": True, "rows": 3,
              "columns": ["idx", "label", "predict", "radius", "correct", "time"], "note": "mine"}
    assert {k: meta[k] for k in expect} == expect
    assert meta["dataset"] == "digits" and meta["precision"] == smooth.precision
    rows = read_rows(out, CERTIFY).rows
    assert sorted(rows) == [0, 4, 8]
    assert all(r.correct == int(r.predict == r.label) for r in rows.values())


def test_full_split_and_class_order_in_the_sidecar(tmp_path):
    """``full_split`` is true when every image is selected; a model's output order is recorded."""
    from robustmaxup.data import ImageSplit, get_info

    g = torch.Generator().manual_seed(0)
    tiny = ImageSplit.from_tensors(torch.rand(3, 1, 8, 8, generator=g), torch.tensor([0, 1, 2]),
                                   get_info("digits"))
    order = [1, 0, 2, 3, 4, 5, 6, 7, 8, 9]
    certify_dataset(Smooth(Ordered(order), 10, 0.25), tiny, [0, 1, 2], out=tmp_path / "c.tsv", **KW)
    meta = _sidecar(tmp_path / "c.tsv")
    assert meta["full_split"] is True and meta["num_selected"] == 3 and meta["class_order"] == order


def test_defaults_are_cohens_n0_100_n_100000_alpha_0001(split, tmp_path, monkeypatch):
    """certify_dataset / predict_dataset defaults as documented: what Smooth is called with, and
    the sidecar (the sampling itself is stubbed out: 10^5 samples would be slow)."""
    from classifiers import Constant

    calls = []
    monkeypatch.setattr(Smooth, "certify_batch", lambda self, xs, *a: calls.append(a[:4]) or [
        types.SimpleNamespace(prediction=3, radius=0.5)] * len(xs))
    monkeypatch.setattr(Smooth, "predict_batch", lambda self, xs, *a: calls.append(a[:3]) or [3] * len(xs))
    smooth = Smooth(Constant(3), 10, 0.25)
    certify_dataset(smooth, split, [0], out=tmp_path / "c.tsv", progress=False)
    predict_dataset(smooth, split, [0], out=tmp_path / "p.tsv", progress=False)
    c, p = _sidecar(tmp_path / "c.tsv"), _sidecar(tmp_path / "p.tsv")
    assert (c["n0"], c["n"], c["alpha"], c["batch_size"], c["seed"]) == (100, 100_000, 0.001, 1000, 0)
    assert (p["n0"], p["n"], p["alpha"], p["batch_size"], p["seed"]) == (None, 100_000, 0.001, 1000, 0)
    assert calls == [(100, 100_000, 0.001, 1000), (100_000, 0.001, 1000)]


def test_settings_and_job_defaults():
    assert dataclasses.astuple(SequentialSettings()) == (100_000, (0.25, 0.5, 0.75, 1.0), 0.02,
                                                         SequentialSettings.sequence, "projected")
    job = SmoothingJob("certify", "m.pt", "digits")
    assert (job.n0, job.n, job.alpha, job.batch_size, job.split, job.skip, job.max_images) == (
        100, 100_000, 0.001, 1000, "test", 1, -1)
    assert job.settings().n0 == 100
    assert SmoothingJob("predict", "m.pt", "digits").settings().n0 is None  # PREDICT has no n0


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize("make, field", [
    (lambda: Settings(n=100, alpha=0.01, batch_size=10, seed=0, n0=0), "n0"),
    (lambda: Settings(n=100, alpha=0.01, batch_size=10, seed=0, sequential=SequentialSettings(n_max=0)), "n_max"),
    (lambda: SmoothingJob("certify", "m.pt", "digits", max_images=0), "max_images"),
    (lambda: SmoothingJob("predict", "m.pt", "digits", sequential=SequentialSettings(radii=(0.5,))), "radii"),
])
def test_out_of_range_settings_are_refused(make, field):
    with pytest.raises(FieldError) as e:
        make().check()
    assert e.value.field == field


def test_a_zero_target_radius_is_allowed():
    Settings(n=100, alpha=0.01, batch_size=10, seed=0, n0=10,
             sequential=SequentialSettings(radii=(0.0, 0.5))).check()


def test_the_memory_check_counts_the_selection_phase():
    """n0 = 10^9 copies of an 8x8 image (256 GB) cannot fit, however small n is."""
    big = Settings(n=1, alpha=0.01, batch_size=10**9, seed=0, n0=10**9)
    with pytest.raises(FieldError):
        big.check_memory((1, 8, 8), 1, torch.device("cpu"))
    dataclasses.replace(big, n0=1).check_memory((1, 8, 8), 1, torch.device("cpu"))  # n0 was the cause


def test_sequential_predict_refuses_certify_only_settings(split, tmp_path):
    """Target radii would be silently ignored by PREDICT: refused; its n_max and futility apply,
    and only they are recorded."""
    with pytest.raises(FieldError, match="sequential certify only"):
        predict_dataset(_smooth(), split, [0], sequential=SequentialSettings(radii=(0.5,)), **{
            k: v for k, v in KW.items() if k != "n0"})
    out = tmp_path / "p.tsv"
    q = SequentialSettings(n_max=300, futility="unanimous")
    rows = predict_dataset(_smooth(), split, [0, 3], sequential=q, out=out,
                           **{k: v for k, v in KW.items() if k != "n0"})
    assert out.read_text().splitlines()[0] == PREDICT_SEQUENTIAL.header
    assert all(0 < r.n_used <= 300 for r in rows)
    meta = _sidecar(out)
    assert meta["sequential"] == {"n_max": 300, "futility": "unanimous"} and meta["mode"] == "predict_sequential"


def test_sequential_predict_applies_its_futility_rule(split):
    """A 50/50 vote never decides: "projected" gives up once even projected votes cannot decide
    by n_max, "unanimous" only once unanimous ones cannot, so it draws more samples first."""
    from classifiers import Votes

    def used(futility):
        rows = predict_dataset(Smooth(Votes([0, 1], 10), 10, 0.25), split, [0], n=100, alpha=0.01,
                               batch_size=100, sequential=SequentialSettings(n_max=2000, futility=futility),
                               progress=False)
        assert rows[0].predict == -1
        return rows[0].n_used

    assert used("projected") < used("unanimous") < 2000


def test_sequential_certify_records_its_confidence_sequence(split, tmp_path):
    q = SequentialSettings(n_max=300, radii=(0.1,), sequence="staged_cp")
    certify_dataset(_smooth(), split, [0], sequential=q, out=tmp_path / "s.tsv", **KW)
    meta = _sidecar(tmp_path / "s.tsv")
    assert meta["confidence_sequence"] == "staged_cp" and meta["sequential"]["n_max"] == 300


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("change, needle", [
    (dict(n0=20), "n0 (10, now 20)"),
    (dict(smooth=_smooth(0.5)), "sigma (0.25, now 0.5)"),
    (dict(indices=[0, 5, 10]), "the image/example selection"),
    (dict(smooth=Smooth(Ordered([1, 0, 2, 3, 4, 5, 6, 7, 8, 9]), 10, 0.25)), "class_order"),
])
def test_resume_with_other_settings_is_refused_and_touches_nothing(split, tmp_path, change, needle):
    out = tmp_path / "c.tsv"
    certify_dataset(_smooth(), split, [0, 5], out=out, **KW)
    before = out.read_text(), Path(str(out) + ".json").read_text()
    change = dict(change)
    smooth, indices = change.pop("smooth", _smooth()), change.pop("indices", [0, 5])
    with pytest.raises(UserError, match="other settings") as e:
        certify_dataset(smooth, split, indices, out=out, resume=True, **{**KW, **change})
    assert needle in str(e.value)
    assert (out.read_text(), Path(str(out) + ".json").read_text()) == before


def test_each_call_that_writes_an_output_is_a_session_of_its_sidecar(split, tmp_path, monkeypatch):
    """A certification killed after two rows and resumed lists both calls: how many rows each
    found written, the process count, and its own provenance (the top-level one is the last)."""
    number_provenance(monkeypatch, runner)
    out = tmp_path / "c.tsv"
    killed = KilledAt(monkeypatch, runner, "stream_generator", at=3)  # the third image's noise
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(_smooth(), split, [0, 5, 9, 2], out=out, **KW)
    killed.disarm()
    assert _sidecar(out)["sessions"] == [{"rows_before": 0, "world_size": 1, "provenance": {"call": 1}}]
    rows = certify_dataset(_smooth(), split, [0, 5, 9, 2], out=out, resume=True, **KW)
    side = _sidecar(out)
    assert side["sessions"] == [{"rows_before": 0, "world_size": 1, "provenance": {"call": 1}},
                                {"rows_before": 2, "world_size": 1, "provenance": {"call": 2}}]
    assert side["provenance"] == {"call": 2} and side["complete"] and [r.idx for r in rows] == [0, 2, 5, 9]


def test_a_complete_output_resumed_is_read_and_left_as_it_is(split, tmp_path, monkeypatch):
    number_provenance(monkeypatch, runner)
    out, side = tmp_path / "c.tsv", tmp_path / "c.tsv.json"
    first = certify_dataset(_smooth(), split, [4, 1], out=out, **KW)
    before = out.read_bytes(), side.read_bytes()
    again = certify_dataset(_smooth(), split, [4, 1], out=out, resume=True, **KW)
    assert (out.read_bytes(), side.read_bytes()) == before and again == first
    assert [r.idx for r in again] == [1, 4]
    # a sidecar that does not say complete (killed between the merge and its last write): rewritten
    side.write_text(json.dumps({**json.loads(side.read_text()), "complete": False}))
    certify_dataset(_smooth(), split, [4, 1], out=out, resume=True, **KW)
    assert _sidecar(out)["complete"] and [s["rows_before"] for s in _sidecar(out)["sessions"]] == [0, 2]


def test_a_sharded_output_is_complete_only_with_no_part_left_and_its_session_counts_processes(
        split, tmp_path):
    out = tmp_path / "c.tsv"
    certify_dataset(_smooth(), split, [4, 1], out=out, **KW)
    saved = _sidecar(out)
    shards = runner.Output.at(out, CERTIFY, Dist(rank=0, world=2))
    shards.check(True, {**saved, "world_size": 2})
    assert shards.finished(2) and not shards.finished(3)
    assert shards.sessions({"x": 1})[-1] == {"rows_before": 2, "world_size": 2, "provenance": {"x": 1}}
    runner.part_path(out, 1).write_text(CERTIFY.header + "\n")  # a part not merged yet
    shards.check(True, {**saved, "world_size": 2})
    assert not shards.finished(2)


def test_resume_refuses_the_sidecar_of_another_mode(split, tmp_path):
    """A fixed-n certify may not continue a sequential certify's output (killed before its first
    row, so only its sidecar says what it is)."""
    out = tmp_path / "s.tsv"
    certify_dataset(_smooth(), split, [0], out=out, sequential=SequentialSettings(n_max=200), **KW)
    out.unlink()
    with pytest.raises(UserError, match="not the sidecar of a certify output"):
        certify_dataset(_smooth(), split, [0], out=out, resume=True, **KW)
    assert not out.exists()


def test_a_failed_run_leaves_an_incomplete_sidecar_and_resume_finishes_it(split, tmp_path, monkeypatch):
    out = tmp_path / "c.tsv"
    real, calls = Smooth.certify_batch, []

    def fails_on_the_second_image(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Smooth, "certify_batch", fails_on_the_second_image)
    with pytest.raises(RuntimeError):
        certify_dataset(_smooth(), split, [0, 5, 10], out=out, **KW)
    assert _sidecar(out)["complete"] is False and list(read_rows(out, CERTIFY).rows) == [0]
    first = out.read_text().splitlines()[1]
    monkeypatch.setattr(Smooth, "certify_batch", real)
    certify_dataset(_smooth(), split, [0, 5, 10], out=out, resume=True, **KW)
    lines = out.read_text().splitlines()
    assert lines[1] == first and [int(x.split("\t")[0]) for x in lines[1:]] == [0, 5, 10]
    assert _sidecar(out)["complete"] is True and _sidecar(out)["rows"] == 3


def test_row_time_is_the_groups_time_shared_by_its_images(split, tmp_path, monkeypatch):
    """Each group of 2 images takes 1 s on a fake clock: 0.5 s per row, 2 s in all."""
    ticks = iter(range(1000))
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    out = tmp_path / "c.tsv"
    certify_dataset(_smooth(), split, [0, 1, 2, 3], images_per_batch=2, out=out, **KW)
    assert [r.time for r in read_rows(out, CERTIFY).rows.values()] == [0.5] * 4
    assert _sidecar(out)["total_time_s"] == 2.0


@pytest.mark.parametrize("with_file", [False, True])
def test_returned_rows_are_sorted_by_index(split, tmp_path, with_file):
    """As documented, with or without ``out`` (the file itself keeps the order of computation)."""
    out = tmp_path / "c.tsv" if with_file else None
    rows = certify_dataset(_smooth(), split, [10, 0, 5], out=out, **KW)
    assert [r.idx for r in rows] == [0, 5, 10]


# ----------------------------------------------------------------------------- sharding
@dataclasses.dataclass(frozen=True)
class Rank(Dist):
    """One rank of a 2-process run, simulated in this process (no process group)."""

    world: int = 2

    def init(self, *args, **kwargs) -> bool:
        return False   # no group joined

    def close(self) -> None:
        pass

    def barrier(self) -> None:
        pass

    def gather_objects(self, obj):
        return [obj] if self.main else None   # the other rank is not simulated


def _count_images(monkeypatch):
    seen, real = [], Smooth.certify_batch

    def spy(self, xs, *args, **kwargs):
        seen.append(xs.shape[0])
        return real(self, xs, *args, **kwargs)

    monkeypatch.setattr(Smooth, "certify_batch", spy)
    return seen


def test_sharded_run_rank_by_rank_equals_one_process(split, tmp_path, monkeypatch):
    """Rank 0 certifies indices[0::2] and merges; rank 1 writes indices[1::2] to FILE.rank1; a
    resumed rank 0 skips what the final file holds, merges sorted and removes the parts."""
    indices, out = [0, 5, 10, 15], tmp_path / "d.tsv"
    ref = certify_dataset(_smooth(), split, indices, **KW)
    seen = _count_images(monkeypatch)
    certify_dataset(_smooth(), split, indices, out=out, dist=Rank(rank=0), **KW)
    assert list(read_rows(out, CERTIFY).rows) == [0, 10] and sum(seen) == 2
    meta = _sidecar(out)
    assert (meta["complete"], meta["rows"], meta["world_size"]) == (False, 2, 2)
    certify_dataset(_smooth(), split, indices, out=out, resume=True, dist=Rank(rank=1), **KW)
    assert list(read_rows(tmp_path / "d.tsv.rank1", CERTIFY).rows) == [5, 15] and sum(seen) == 4
    rows = certify_dataset(_smooth(), split, indices, out=out, resume=True, dist=Rank(rank=0), **KW)
    assert sum(seen) == 4  # nothing recomputed
    assert [int(line.split("\t")[0]) for line in out.read_text().splitlines()[1:]] == indices
    assert [(r.idx, r.predict, r.radius) for r in rows] == [(r.idx, r.predict, round(r.radius, 6)) for r in ref]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.tsv", "d.tsv.json"]
    assert _sidecar(out)["complete"] is True and _sidecar(out)["rows"] == 4


def test_a_rank_without_a_file_computes_only_its_share(split, monkeypatch):
    seen = _count_images(monkeypatch)
    certify_dataset(_smooth(), split, [0, 5, 10, 15, 20], dist=Rank(rank=1), **KW)
    assert sum(seen) == 2


# ----------------------------------------------------------------------------- default names
def test_default_out_names_command_checkpoint_split_sigma_and_mode():
    job = SmoothingJob("certify", "runs/maxup/last.pt", "digits")
    assert default_out(job, 0.25) == Path("certify_maxup-last_test_sigma0.25.tsv")
    seq = SmoothingJob("predict", "c10.pt", "digits", split="train", sequential=SequentialSettings())
    assert default_out(seq, 0.5) == Path("predict_c10_train_sigma0.5_sequential.tsv")


# ----------------------------------------------------------------------------- the CLI's flags
def _job(monkeypatch, argv):
    import robustmaxup.cli._smoothing as smoothing

    jobs = []
    monkeypatch.setattr(smoothing, "run_job", jobs.append)
    assert main(argv) == 0
    return jobs[0]


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_flag_defaults(monkeypatch, command):
    job = _job(monkeypatch, [command, "m.pt", "--dataset", "digits"])
    want = SmoothingJob(command, "m.pt", "digits", n0=100 if command == "certify" else None)
    assert job == want and (job.n, job.alpha, job.batch_size, job.seed, job.split) == (
        100_000, 0.001, 1000, 0, "test")


def test_every_flag_reaches_its_field(monkeypatch, tmp_path):
    argv = ["certify", "m.pt", "--dataset", "digits", "--split", "train", "--sigma", "0.5",
            "--n0", "7", "--n", "9", "--alpha", "0.02", "--batch", "3", "--skip", "4", "--max", "5",
            "--out", "o.tsv", "--resume", "--images-per-batch", "6", "--precision", "fp32",
            "--compile", "--fold-bn", "--class-order", "a, b", "--device", "cpu", "--seed", "8",
            "--quiet"]
    job = _job(monkeypatch, argv)
    assert job == SmoothingJob("certify", "m.pt", "digits", split="train", sigma=0.5, n0=7, n=9,
                               alpha=0.02, batch_size=3, skip=4, max_images=5, out="o.tsv",
                               resume=True, images_per_batch=6, precision="fp32", compile=True,
                               fold_bn=True, class_order=("a", "b"), device="cpu", seed=8, quiet=True)


@pytest.mark.parametrize("extra, want", [
    (["--n-max", "50", "--futility", "unanimous", "--sequence", "staged_cp", "--radii", "0.1"],
     SequentialSettings(n_max=50, futility="unanimous", sequence="staged_cp", radii=(0.1,))),
    (["--radii"], SequentialSettings(radii=None)),
    (["--radii", "--radius-tol", "0.1"], SequentialSettings(radii=None, radius_tol=0.1)),
])
def test_sequential_flags(monkeypatch, extra, want):
    job = _job(monkeypatch, ["certify", "m.pt", "--dataset", "digits", "--sequential", *extra])
    assert job.sequential == want and job.n == 100_000


@pytest.mark.parametrize("extra, needle", [
    (["--n-max", "50"], "--n-max applies only with --sequential"),
    (["--out", " "], "--out is empty"),
    (["--batch", "0"], "--batch must"),
    (["--max", "0"], "--max must be -1 (all images) or an integer >= 1"),
])
def test_refused_flags_name_themselves(tmp_path, capsys, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    assert main(["certify", "m.pt", "--dataset", "digits", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not list(tmp_path.iterdir())


def test_cohens_positional_form_only_when_it_is_one():
    from robustmaxup.cli._cohen import cohen_positional_error as cohen

    assert cohen("certify", ["digits", "m.pt", "0.25", "o.tsv", "--skip", "2"]).endswith(
        "robustmaxup certify m.pt --dataset digits --sigma 0.25 --out o.tsv --skip 2")
    assert cohen("certify", ["digits", "m.pt", "0.25"]) is None                 # three positionals
    assert cohen("certify", ["mnist9", "m.pt", "0.25", "o.tsv"]) is None        # no such dataset
    assert cohen("certify", ["digits", "m.pt", "x", "o.tsv"]) is None           # sigma not a number
    assert cohen("certify", ["digits", "m.pt", "0.25", "o.tsv", "--dataset", "digits"]) is None
    assert cohen("certify", ["digits", "m.pt", "0.25", "o.tsv", "--dataset=digits"]) is None


def test_cohens_positional_form_with_options_anywhere_and_a_root_only_where_one_is_read():
    from robustmaxup.cli._cohen import cohen_positional_error as cohen

    # every option of Cohen's certify.py takes a value, so "--skip 20" is one option, not a positional
    assert cohen("certify", ["--skip", "20", "digits", "m.pt", "0.25", "o.tsv"]).endswith(
        "robustmaxup certify m.pt --dataset digits --sigma 0.25 --out o.tsv --skip 20")
    assert cohen("predict", ["--N0=100", "cifar10", "m.pt", "--N", "1000", "0.5", "o.tsv"]).endswith(
        "robustmaxup predict m.pt --dataset cifar10 --data-root DIR --sigma 0.5 --out o.tsv --N0=100 --N 1000")
    assert cohen("certify", ["--skip", "digits", "m.pt", "0.25", "o.tsv"]) is None  # "digits" is --skip's


def test_cohens_form_is_one_line_before_argparse(capsys):
    assert main(["predict", "digits", "m.pt", "0.25", "o.tsv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Cohen et al.'s positional form" in err[0]


# ----------------------------------------------------------------------------- common.run
def _raise(exc):
    def body(args):
        raise exc
    return body


@pytest.mark.parametrize("exc, code, needle", [
    (MemoryError(), 2, "out of memory"),
    (OSError(errno.ENOSPC, "No space left on device", "o.tsv"), 2, "No space left on device (o.tsv)"),
    (FieldError("batch_size", "must be >= 1"), 2, "--batch must be >= 1"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_run_turns_failures_into_one_line(capsys, exc, code, needle):
    from robustmaxup.cli.args import make_parser
    from robustmaxup.cli.common import run

    assert run("certify", _raise(exc), make_parser("certify", ""), [], {"batch_size": "--batch"}) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("robustmaxup certify")


def test_sigterm_exits_143(capsys):
    from robustmaxup.cli.args import make_parser
    from robustmaxup.cli.common import run
    from robustmaxup.runtime.interrupts import Terminated

    assert run("train", _raise(Terminated()), make_parser("train", ""), []) == 143
    assert "terminated" in capsys.readouterr().err


def test_usage_errors_and_unknown_commands_are_one_line_exit_2(capsys):
    assert main(["certify", "m.pt", "--dataset", "digits", "--bogus"]) == 2
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "unrecognized arguments: --bogus" in err[0] and "unknown command" in err[1]
    assert main(["export", "m.pt", "--out", "x.pt"]) == 2  # --format is required
    assert "--format" in capsys.readouterr().err


def test_quiet_logs_warnings_only():
    from robustmaxup.cli.common import setup_logging

    setup_logging(quiet=True)
    assert logging.getLogger().level == logging.WARNING
    setup_logging(quiet=False)
    assert logging.getLogger().level == logging.INFO


def test_class_names_from_a_list_or_a_file(tmp_path):
    import argparse

    from robustmaxup.cli.args import class_names

    assert class_names("cat, dog,,bird") == ("cat", "dog", "bird")
    f = tmp_path / "names.txt"
    f.write_text("cat\n\n dog \n")
    assert class_names(str(f)) == ("cat", "dog")
    with pytest.raises(argparse.ArgumentTypeError, match="no class names"):
        class_names(" , ")


# ----------------------------------------------------------------------------- train / attack
def test_train_switches_and_booleans():
    from robustmaxup.cli.train import _parse_bool, build_parser

    assert [_parse_bool(t) for t in ("yes", "On", "1", "no", "OFF", "0")] == [True, True, True, False, False, False]
    args = build_parser().parse_args(["--no-data-augment", "--nesterov"])
    assert (args.data_augment, args.nesterov) == (False, True)


def test_list_recipes_takes_no_other_flags(capsys):
    assert main(["train", "--list-recipes", "--seed", "1"]) == 2
    assert "--list-recipes only prints the table; drop --seed" in capsys.readouterr().err


def test_attack_flags_to_config():
    from robustmaxup.cli.attack import attack_config, build_parser
    from robustmaxup.cli.attack import default_out as attack_out

    p = build_parser()
    args = p.parse_args(["m.pt", "--dataset", "digits", "--eps", "0.5", "--smoothed", "--norm", "L2"])
    assert (args.n_examples, args.copies, args.batch) == (1000, 32, 500)
    cfg = attack_config(args, 0.5, 0.25)
    assert (cfg.version, cfg.copies, cfg.sigma, cfg.batch_size) == ("rand", 32, 0.25, 500)
    args = p.parse_args(["m.pt", "--dataset", "digits", "--eps", "0.5", "--smoothed", "--sigma", "0.5"])
    assert attack_out(args, 0.5) == Path("attack_m_autoattack_Linf_eps0.5_smoothed_sigma0.5.json")
    for bad, needle in ((["--copies", "16"], "--sigma/--copies only apply with --smoothed"),
                        (["--step-size", "0.1"], "--steps/--step-size apply to --attack pgd")):
        with pytest.raises(UserError, match=needle):
            attack_config(p.parse_args(["m.pt", "--dataset", "digits", "--eps", "0.5", *bad]), 0.5, None)


# ----------------------------------------------------------------------------- the job
FAST = ["--dataset", "digits", "--n0", "20", "--n", "200", "--batch", "100", "--alpha", "0.01",
        "--device", "cpu", "--quiet"]


def test_the_cli_sidecar_records_the_selection(untrained_ckpt, tmp_path):
    out = tmp_path / "c.tsv"
    assert main(["certify", untrained_ckpt, *FAST, "--skip", "45", "--max", "3", "--out", str(out)]) == 0
    meta = _sidecar(out)
    assert (meta["skip"], meta["max"], meta["config"]["max_images"], meta["config"]["skip"]) == (45, 3, 3, 45)
    # 8 skip-selected indices 0, 45, ..., 315; 3 spread evenly: positions floor(i * 8 / 3) = 0, 2, 5
    assert meta["indices"] == [0, 90, 225] and meta["clean_accuracy"]["images"] == 3


def test_a_sidecar_path_that_is_the_checkpoint_is_refused(tmp_path):
    """``--out o.tsv`` would write ``o.tsv.json``: refused when that is the checkpoint."""
    from robustmaxup.certify.runner import _check_out

    out = tmp_path / "o.tsv"
    ckpt = Path(str(out) + ".json")
    ckpt.write_bytes(b"weights")
    job = SmoothingJob("certify", str(ckpt), "digits", out=str(out), resume=True)
    with pytest.raises(UserError, match="an input of this command"):
        _check_out(job, out, job.settings(), Dist())
    assert ckpt.read_bytes() == b"weights"


def test_a_default_output_that_is_the_checkpoint_is_refused(untrained_ckpt, tmp_path, monkeypatch, capsys):
    """The default name (known once the checkpoint gives sigma) linked to the checkpoint itself."""
    import os

    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "digits.pt"
    mine.write_bytes(Path(untrained_ckpt).read_bytes())
    os.link(mine, tmp_path / "certify_digits_test_sigma0.25.tsv")
    before = mine.read_bytes()
    assert main(["certify", str(mine), *FAST, "--max", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an input of this command" in err[0], err
    assert mine.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "certify_digits_test_sigma0.25.tsv", "digits.pt"]


def test_a_perturbation_option_without_its_switch_is_refused(tmp_path, capsys):
    """--awp-warmup modifies AWP, which only --awp-gamma switches on: silently ignored otherwise."""
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--awp-warmup", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--awp-* options need --awp-gamma itself" in err[0], err
    assert not out.exists()
