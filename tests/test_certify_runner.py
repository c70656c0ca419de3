"""The certify runner as Python users call it: the same rows as the CLI, typed TSV rows, output
safety (foreign files, locks), and models that still train after being certified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustmaxup.certify import Smooth
from robustmaxup.certify.runner import certify_dataset, predict_dataset, run_job
from robustmaxup.certify.tsv import radius_as_written
from robustmaxup.certify.tsv import (
    CERTIFY, CERTIFY_SEQUENTIAL, PREDICT, CertifyRow, PredictRow, read_rows, write_rows,
)
from robustmaxup.checkpoints import load_model
from robustmaxup.cli import main
from robustmaxup.cli._smoothing import job_from_args
from robustmaxup.cli.certify import build_parser as certify_parser
from robustmaxup.data import load_split, select_indices
from robustmaxup.errors import UserError
from robustmaxup.runtime.io import open_locked

FAST = ["--dataset", "digits", "--n0", "20", "--n", "200", "--batch", "100", "--alpha", "0.01",
        "--skip", "45", "--max", "6", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint):
    return digits_checkpoint


def _lines(path):
    return [line.rsplit("\t", 1)[0] for line in Path(path).read_text().splitlines()]


def test_certify_dataset_equals_the_cli(ckpt, tmp_path):
    out = tmp_path / "cli.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(out)]) == 0
    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    indices = select_indices(len(split), 45, 6)
    rows = certify_dataset(Smooth(model, 10, 0.25), split, indices, n0=20, n=200, alpha=0.01,
                           batch_size=100, seed=0, progress=False)
    assert [r.to_line().rsplit("\t", 1)[0] for r in rows] == _lines(out)[1:]
    assert all(isinstance(r, CertifyRow) and r.n_used is None for r in rows)
    # with out=, the Python API writes what the CLI writes (the time column aside)
    api = tmp_path / "api.tsv"
    certify_dataset(Smooth(model, 10, 0.25), split, indices, n0=20, n=200, alpha=0.01,
                    batch_size=100, seed=0, out=api, progress=False)
    assert _lines(api) == _lines(out)
    meta = json.loads(Path(str(api) + ".json").read_text())
    assert meta["complete"] and meta["indices"] == indices and meta["mode"] == "certify"


def test_predict_dataset_equals_the_cli(ckpt, tmp_path):
    out = tmp_path / "p.tsv"
    argv = [a for a in FAST if a not in ("--n0", "20")]
    assert main(["predict", ckpt, *argv, "--out", str(out)]) == 0
    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    rows = predict_dataset(Smooth(model, 10, 0.25), split, select_indices(len(split), 45, 6),
                           n=200, alpha=0.01, batch_size=100, seed=0, progress=False)
    assert all(isinstance(r, PredictRow) for r in rows)
    assert [r.to_line().rsplit("\t", 1)[0] for r in rows] == _lines(out)[1:]


def test_model_still_trains_after_certify(ckpt, tmp_path, monkeypatch):
    """The job loads the model outside inference mode: a backward pass works afterwards."""
    import robustmaxup.checkpoints as checkpoints

    seen = {}
    real = checkpoints.load_model

    def spy(*args, **kwargs):
        seen["model"], meta = real(*args, **kwargs)
        return seen["model"], meta

    monkeypatch.setattr(checkpoints, "load_model", spy)
    assert main(["certify", ckpt, *FAST, "--max", "1", "--out", str(tmp_path / "o.tsv")]) == 0
    model = seen["model"]
    loss = model(torch.rand(2, 1, 8, 8)).logsumexp(1).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resume_refuses_a_foreign_file_and_touches_nothing(ckpt, tmp_path, capsys):
    foreign = tmp_path / "r.json"
    foreign.write_text('{"acc":0.93}')
    assert main(["certify", ckpt, *FAST, "--out", str(foreign), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a certify output" in err[0]
    assert foreign.read_text() == '{"acc":0.93}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no sidecar either
    # a predict file is not a certify file either
    pred = tmp_path / "p.tsv"
    pred.write_text(PREDICT.header + "\n")
    assert main(["certify", ckpt, *FAST, "--out", str(pred), "--resume"]) == 2
    assert pred.read_text() == PREDICT.header + "\n"


def test_rows_round_trip_and_torn_lines(tmp_path):
    rows = [CertifyRow(3, 1, 1, 0.5, 1, 1.25), CertifyRow(1, 2, -1, 0.0, 0, 0.5)]
    path = tmp_path / "c.tsv"
    write_rows(path, CERTIFY, rows)
    with open(path, "a") as f:
        f.write("7\t1\t1\t0.2")  # torn last line
    got = read_rows(path, CERTIFY)
    assert sorted(got.rows) == [1, 3] and got.rows[3] == rows[0]
    assert got.complete_bytes == len(path.read_bytes()) - len("7\t1\t1\t0.2")
    seq = CertifyRow(4, 1, 1, 0.25, 1, 2.0, n_used=3000)
    assert CertifyRow.from_line(seq.to_line(), CERTIFY_SEQUENTIAL) == seq
    with pytest.raises(UserError, match="header"):
        read_rows(path, CERTIFY_SEQUENTIAL)


def test_a_locked_output_refuses_a_second_writer(tmp_path):
    path = tmp_path / "o.tsv"
    first = open_locked(path, append=False)
    try:
        with pytest.raises(UserError, match="already exists"):
            open_locked(path, append=False)
        with pytest.raises(UserError, match="another run"):
            open_locked(path, append=True)
    finally:
        first.close()
    open_locked(path, append=True).close()  # free again once the first writer is gone


def test_max_spreads_over_a_class_sorted_split():
    labels = [c for c in range(10) for _ in range(36)]  # class-sorted, like an ImageFolder tree
    chosen = select_indices(len(labels), 1, 10)
    assert len(chosen) == 10 and len({labels[i] for i in chosen}) == 10
    assert len({labels[i] for i in range(10)}) == 1  # what an index bound would have kept
    assert select_indices(360, 45, 6) == [0, 45, 90, 180, 225, 270]
    assert select_indices(360, 45, -1) == list(range(0, 360, 45))
    assert select_indices(360, 45, 100) == list(range(0, 360, 45))


def test_cohen_flag_aliases(ckpt, tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    argv = [x for x in FAST if x not in ("--n0", "20", "--n", "200")]
    assert main(["certify", ckpt, *argv, "--max", "2", "--N0", "20", "--N", "200", "--out", str(a)]) == 0
    assert main(["certify", ckpt, *argv, "--max", "2", "--n0", "20", "--n", "200", "--out", str(b)]) == 0
    assert _lines(a) == _lines(b)


def test_analyze_warns_once_when_files_differ(ckpt, tmp_path, capsys):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    assert main(["certify", ckpt, *FAST, "--max", "2", "--out", str(a)]) == 0
    assert main(["certify", ckpt, *FAST, "--max", "3", "--sigma", "0.5", "--out", str(b)]) == 0
    capsys.readouterr()
    assert main(["analyze", str(a), str(a), "--radii", "0"]) == 0
    assert "differ" not in capsys.readouterr().err
    assert main(["analyze", str(a), str(b), "--radii", "0"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "differ" in line]
    assert len(err) == 1 and "images" in err[0] and "sigma (a.tsv 0.25, b.tsv 0.5)" in err[0]


def test_leading_double_dash_is_accepted(capsys):
    """`torchrun ... -m robustmaxup -- train ...` hands the `--` on to us."""
    assert main(["--", "analyze", "--help"]) == 0
    assert "usage: robustmaxup analyze" in capsys.readouterr().out


SEQ = ["--sequential", "--n-max", "3000", "--radii", "0.1", "0.2"]
FAST_SEQ = [a for i, a in enumerate(FAST) if "--n" not in FAST[max(i - 1, 0):i + 1]]  # no --n 200


def test_sequential_cli_rows_sidecar_resume_and_analyze(ckpt, tmp_path, capsys):
    from robustmaxup.runtime.seeds import stream_generator

    out = tmp_path / "seq.tsv"
    assert main(["certify", ckpt, *FAST_SEQ, *SEQ, "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == CERTIFY_SEQUENTIAL.header
    rows = [CertifyRow.from_line(line, CERTIFY_SEQUENTIAL) for line in lines[1:]]
    assert all(0 < r.n_used <= 3000 for r in rows)
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert meta["mode"] == "certify_sequential" and meta["sequential"]["radii"] == [0.1, 0.2]
    assert meta["confidence_sequence"] == meta["sequential"]["sequence"] and meta["sequential"]["n_max"] == 3000
    # any row is recomputed alone by Smooth.certify_sequential from (seed, idx)
    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    x, y = split[rows[1].idx]
    cert = Smooth(model, 10, 0.25).certify_sequential(
        x, 20, 3000, 0.01, 100, radii=[0.1, 0.2], generator=stream_generator(0, "certify.noise", rows[1].idx))
    assert (cert.prediction, round(cert.radius, 6), cert.n_used) == (rows[1].predict, rows[1].radius, rows[1].n_used)
    # a killed run (torn last line) resumes to the same rows, batched differently
    torn = tmp_path / "torn.tsv"
    torn.write_text("\n".join(lines[:3]) + "\n" + lines[3][:5])
    Path(str(torn) + ".json").write_text(Path(str(out) + ".json").read_text())
    assert main(["certify", ckpt, *FAST_SEQ, *SEQ, "--out", str(torn), "--resume", "--images-per-batch", "4"]) == 0
    no_time = lambda p: [line.split("\t")[:5] + line.split("\t")[6:] for line in Path(p).read_text().splitlines()]  # noqa: E731
    assert no_time(torn) == no_time(out)
    # resuming with other sequential settings, or as fixed-n, is refused
    assert main(["certify", ckpt, *FAST_SEQ, *SEQ[:-1], "--out", str(torn), "--resume"]) == 2
    assert main(["certify", ckpt, *FAST, "--out", str(torn), "--resume"]) == 2
    capsys.readouterr()
    assert main(["analyze", str(out), "--radii", "0.1"]) == 0
    text = capsys.readouterr().out
    mean = sum(r.n_used for r in rows) / len(rows)
    assert f"| samples/image | {mean:.0f} |" in text and "sequential, mean" in text


@pytest.mark.parametrize("existing", ["tsv", "sidecar"])
def test_an_existing_output_is_refused_before_the_model_is_loaded(ckpt, tmp_path, monkeypatch, existing):
    import robustmaxup.checkpoints as checkpoints

    out = tmp_path / "c.tsv"
    (out if existing == "tsv" else tmp_path / "c.tsv.json").write_text("x")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the existing output was refused")

    monkeypatch.setattr(checkpoints, "load_model", no_load)
    args = certify_parser().parse_args([ckpt, *FAST, "--out", str(out)])
    with pytest.raises(UserError, match="already exists"):
        run_job(job_from_args("certify", args))
    assert out.read_text() == "x" if existing == "tsv" else not out.exists()


def test_sidecar_time_counts_every_calls_work_not_only_the_last(ckpt, tmp_path):
    from robustmaxup.certify.tsv import read_certify

    out = tmp_path / "c.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(out)]) == 0
    first = json.loads((tmp_path / "c.tsv.json").read_text())
    rows_total = sum(r.time for r in read_certify(out)[0])
    assert first["total_time_s"] == pytest.approx(rows_total, abs=1e-3) and first["this_call_s"] > 0
    assert main(["certify", ckpt, *FAST, "--out", str(out), "--resume"]) == 0  # nothing left to do
    again = json.loads((tmp_path / "c.tsv.json").read_text())
    assert again["total_time_s"] == pytest.approx(first["total_time_s"], abs=1e-3)


def test_a_default_output_that_is_an_input_is_refused_even_with_resume(ckpt, tmp_path, monkeypatch):
    """The default name (known only once sigma is) gets the same input check as an explicit
    --out: with --resume, nothing else would stop certify from appending rows to the input."""
    from robustmaxup.certify.runner import _check_out, default_out
    from robustmaxup.runtime.dist import Dist

    monkeypatch.chdir(tmp_path)
    args = certify_parser().parse_args([ckpt, *FAST, "--resume"])
    job = job_from_args("certify", args)
    out = default_out(job, 0.25)
    out.write_text("an input, not a certify file\n")
    job = job_from_args("certify", certify_parser().parse_args(
        [ckpt, *FAST, "--resume", "--data-root", str(out)]))
    with pytest.raises(UserError, match="an input of this command"):
        _check_out(job, out, job.settings(), Dist.from_env())
    assert out.read_text() == "an input, not a certify file\n"


@pytest.mark.parametrize("n_max", [5, 10])
def test_a_hopeless_sequential_run_warns_once_before_it_starts(n_max, caplog, monkeypatch):
    """Also through the Python API (not only the CLI). n_max = 5 is below Clopper-Pearson's
    minimum (10 at alpha = 0.001); n_max = 10 passes that but not the sequence's own check
    (alpha spent on early looks): one warning each, naming the sequence, given before the first
    image is sampled."""
    from robustmaxup.certify.runner import SequentialSettings
    from classifiers import Constant

    smooth = Smooth(Constant(1), 10, 0.25)
    said_before_sampling = []
    real = Smooth.sample_counts

    def sample_counts(self, *args):
        said_before_sampling.append(caplog.text)
        return real(self, *args)

    monkeypatch.setattr(Smooth, "sample_counts", sample_counts)
    split = load_split("digits", "test")
    with caplog.at_level("WARNING"):
        rows = certify_dataset(smooth, split, [0, 1, 2], n0=10, alpha=0.001, batch_size=100,
                               sequential=SequentialSettings(n_max=n_max, radii=(0.1,)), progress=False)
    assert caplog.text.count("never certify") == 1 and "mixture_cp" in caplog.text
    assert "never certify" in said_before_sampling[0]
    assert all(r.predict == -1 for r in rows)


def test_the_cli_warns_once_for_a_hopeless_n_max(ckpt, tmp_path, capsys, caplog):
    """`certify --sequential --n-max 5` gave two warnings (Clopper-Pearson's and the sequence's)."""
    with caplog.at_level("WARNING"):
        assert main(["certify", ckpt, *FAST_SEQ, "--sequential", "--n-max", "5", "--out", str(tmp_path / "s.tsv")]) == 0
    said = caplog.text + capsys.readouterr().err
    assert said.count("never certify") == 1 and "n_max=5" in said


@pytest.mark.parametrize("n,warned", [(10, True), (11, False)])
def test_predict_warns_when_n_can_never_pass_its_test(n, warned, caplog):
    """Two-sided binomial test of n unanimous votes: p = 2 * 0.5**n, <= 0.001 from n = 11 on."""
    from classifiers import Constant

    with caplog.at_level("WARNING"):
        rows = predict_dataset(Smooth(Constant(3), 10, 0.25), load_split("digits", "test"), [0, 1],
                               n=n, alpha=0.001, batch_size=100, progress=False)
    assert caplog.text.count("never pass PREDICT's test") == int(warned)
    assert [r.predict for r in rows] == ([-1, -1] if warned else [3, 3])


def _digits_smooth() -> Smooth:
    torch.manual_seed(0)
    return Smooth(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), 10, 0.25)


def test_certify_dataset_passes_every_sequential_setting_through():
    """Non-default sequence, futility rule, radius_tol and n_max: each row equals
    Smooth.certify_sequential with the same settings and the row's own generator."""
    from robustmaxup.certify.runner import SequentialSettings
    from robustmaxup.runtime.seeds import stream_generator

    smooth, split = _digits_smooth(), load_split("digits", "test")
    same = dict(radii=None, radius_tol=0.05, sequence="staged_cp", futility="unanimous")
    rows = certify_dataset(smooth, split, list(range(0, 40, 4)), n0=20, alpha=0.01, batch_size=500, seed=3,
                           sequential=SequentialSettings(n_max=2300, **same), progress=False)
    for row in rows:
        cert = smooth.certify_sequential(split[row.idx][0], 20, 2300, 0.01, 500,
                                         generator=stream_generator(3, "certify.noise", row.idx), **same)
        assert (row.predict, row.radius, row.n_used) == (cert.prediction, radius_as_written(cert.radius),
                                                         cert.n_used)
    assert len({r.n_used for r in rows}) > 1


@pytest.mark.parametrize("key,was,now", [("alpha", 0.01, 0.05), ("seed", 0, 1)])
def test_resume_with_another_alpha_or_seed_is_refused(tmp_path, key, was, now):
    """Only the one setting differs (same images), and the error names it."""
    smooth, split, out = _digits_smooth(), load_split("digits", "test"), tmp_path / "c.tsv"
    kw = dict(n0=10, n=100, alpha=0.01, batch_size=100, seed=0, progress=False)
    certify_dataset(smooth, split, [0, 5], out=out, **kw)
    certify_dataset(smooth, split, [0, 5], out=out, resume=True, **kw)  # the same settings: fine
    with pytest.raises(UserError, match=rf"other settings: {key} \({was}, now {now}\);"):
        certify_dataset(smooth, split, [0, 5], out=out, resume=True, **{**kw, key: now})
