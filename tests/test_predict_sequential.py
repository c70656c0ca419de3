"""Sequential PREDICT over a dataset (`robustmaxup predict --sequential --n-max N`,
`predict_dataset(..., sequential=SequentialSettings(n_max=N))`): each row is what
`Smooth.predict_sequential` gives for that image with its own seeded generator, rows carry the
samples drawn, and flags that only sequential CERTIFY uses are refused in one line.

Its statistics (wrong-class rate, the (C - 1)/alpha threshold, the last look, the futility stop)
are tested on closed-form classifiers in test_sequential.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classifiers import Constant
from robustmaxup.certify import Smooth, bounds
from robustmaxup.certify.runner import SequentialSettings, predict_dataset
from robustmaxup.certify.tsv import PREDICT_SEQUENTIAL, PredictRow, read_rows
from robustmaxup.checkpoints import load_model
from robustmaxup.cli import main
from robustmaxup.data import load_split, select_indices
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.seeds import stream_generator

FLAGS = ["--dataset", "digits", "--batch", "100", "--alpha", "0.01", "--skip", "45", "--max", "8",
         "--device", "cpu", "--quiet"]


def _run(ckpt: str, out: Path, *extra: str) -> int:
    return main(["predict", ckpt, *FLAGS, "--sequential", "--n-max", "3000", "--out", str(out), *extra])


def test_rows_are_smooth_predict_sequential_per_image(digits_checkpoint, tmp_path):
    out = tmp_path / "p.tsv"
    assert _run(digits_checkpoint, out) == 0
    rows = list(read_rows(out, PREDICT_SEQUENTIAL).rows.values())
    assert Path(out).read_text().splitlines()[0].split("\t")[-1] == "n_used"
    model, _ = load_model(digits_checkpoint, dataset="digits")
    smooth, split = Smooth(model, 10, 0.25), load_split("digits", "test")
    assert [r.idx for r in rows] == select_indices(len(split), 45, 8)
    for r in rows:
        x, y = split[r.idx]
        p = smooth.predict_sequential_details(x[None], 3000, 0.01, 100,
                                              [stream_generator(0, "certify.noise", r.idx)])[0]
        assert (r.label, r.predict, r.n_used, r.correct) == (y, p.prediction, p.n_used, int(p.prediction == y))
    assert min(r.n_used for r in rows) < 3000            # clear images stop early
    meta = json.loads((tmp_path / "p.tsv.json").read_text())
    assert meta["mode"] == "predict_sequential" and meta["sequential"] == {"n_max": 3000, "futility": "projected"}
    # the Python API writes the same rows; packing images changes nothing
    api = predict_dataset(smooth, split, [r.idx for r in rows], n=1, alpha=0.01, batch_size=100,
                          images_per_batch=3, sequential=SequentialSettings(n_max=3000), progress=False)
    assert [(a.predict, a.n_used) for a in api] == [(r.predict, r.n_used) for r in rows]
    assert all(isinstance(a, PredictRow) for a in api)


def test_resume_and_settings_are_checked(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "p.tsv"
    assert _run(digits_checkpoint, out) == 0
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    out.write_text("".join(lines[:4]))                   # an interrupted run: 3 rows left
    assert _run(digits_checkpoint, out, "--resume") == 0
    strip = lambda t: [line.rsplit("\t", 2)[0] for line in t.splitlines()]  # noqa: E731  (time, n_used)
    assert strip(out.read_text()) == strip(text)
    capsys.readouterr()
    assert main(["predict", digits_checkpoint, *FLAGS, "--sequential", "--n-max", "2000", "--out", str(out),
                 "--resume"]) == 2
    assert "other settings: --n-max (3000, now 2000)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--n-max", "100"], "--n-max applies only with --sequential"),
    (["--sequential", "--n", "100"], "--n is not used with --sequential"),
    (["--sequential", "--radii", "0.5"], "unrecognized arguments: --radii"),
    (["--sequential", "--sequence", "betting"], "unrecognized arguments: --sequence"),
    (["--futility", "unanimous"], "--futility applies only with --sequential"),
])
def test_flags_sequential_predict_does_not_use_are_one_line(digits_checkpoint, tmp_path, capsys, argv, message):
    assert main(["predict", digits_checkpoint, *FLAGS, *argv, "--out", str(tmp_path / "x.tsv")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.tsv").exists()


def test_futility_is_a_predict_setting_recorded_and_checked_on_resume(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "p.tsv"
    assert _run(digits_checkpoint, out, "--futility", "unanimous") == 0
    meta = json.loads((tmp_path / "p.tsv.json").read_text())
    assert meta["sequential"] == {"n_max": 3000, "futility": "unanimous"}
    capsys.readouterr()
    assert _run(digits_checkpoint, out, "--resume") == 2        # the default is projected
    err = capsys.readouterr().err
    assert "futility" in err and len(err.strip().splitlines()) == 1


def test_the_library_refuses_certify_only_settings():
    smooth = Smooth(Constant(3), 10, 0.25)
    with pytest.raises(FieldError, match="radii.*sequential certify only"):
        predict_dataset(smooth, load_split("digits", "test"), [0], alpha=0.01, batch_size=100,
                        sequential=SequentialSettings(n_max=1000, radii=(0.5,)), progress=False)


@pytest.mark.parametrize("alpha,classes", [(0.001, 10), (0.01, 2), (0.001, 1000), (1e-6, 10)])
def test_min_samples_to_predict_sequential_is_exact(alpha, classes):
    n = bounds.min_samples_to_predict_sequential(alpha, classes)
    need = np.log((classes - 1) / alpha)
    evidence = lambda k: bounds.one_sided_mixture_log_evidence(k, k, 0.5, *bounds.MIXTURE_PRIOR)  # noqa: E731
    assert evidence(n - 1) < need <= evidence(n)


@pytest.mark.parametrize("n_max,warned", [(13, True), (14, False)])
def test_warns_when_n_max_can_never_decide(n_max, warned, caplog):
    """Unanimous votes reach log((C - 1)/alpha) = log(9000) at 14 samples, not at 13."""
    assert bounds.min_samples_to_predict_sequential(0.001, 10) == 14
    with caplog.at_level("WARNING"):
        rows = predict_dataset(Smooth(Constant(3), 10, 0.25), load_split("digits", "test"), [0, 1], n=1,
                               alpha=0.001, batch_size=100, sequential=SequentialSettings(n_max=n_max),
                               progress=False)
    assert caplog.text.count("never decide sequential PREDICT") == int(warned)
    assert [r.predict for r in rows] == ([-1, -1] if warned else [3, 3])
    assert all(r.n_used == n_max for r in rows)


# ----------------------------------------------------------------------------- analyze
def _predict_file(path: Path, rows: list[PredictRow], fmt=PREDICT_SEQUENTIAL) -> str:
    from robustmaxup.certify.tsv import write_rows

    write_rows(path, fmt, rows)
    return str(path)


def test_analyze_summarises_predict_files(tmp_path, capsys):
    """Accuracy counts abstentions as wrong; the abstain rate, the accuracy among decided images
    and the mean samples are exact."""
    seq = _predict_file(tmp_path / "seq.tsv", [PredictRow(0, 1, 1, 1, n_used=100), PredictRow(1, 2, -1, 0, n_used=5000),
                                               PredictRow(2, 3, 4, 0, n_used=300), PredictRow(3, 0, 0, 1, n_used=200)])
    assert main(["analyze", seq, "--format", "csv", "--quiet"]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table == ["predict,seq.tsv", "accuracy,0.500", "abstain,0.250", "accuracy when not abstained,0.667",
                     "images,4", "samples/image,1400"]


def test_analyze_refuses_mixed_files_and_a_predict_plot(tmp_path, capsys):
    from robustmaxup.certify.tsv import CERTIFY, CertifyRow, write_rows

    pred = _predict_file(tmp_path / "p.tsv", [PredictRow(0, 1, 1, 1, n_used=100)])
    cert = tmp_path / "c.tsv"
    write_rows(cert, CERTIFY, [CertifyRow(1, 1, 1, 0.5, 1)])   # other images: a "differ" warning
    for argv, message in (([pred, str(cert)], "not both: c.tsv is a certify file"),
                          ([pred, "--plot", str(tmp_path / "x.png")], "predict files have no radii")):
        assert main(["analyze", *argv, "--out", str(tmp_path / "t.md")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err   # the error alone, no warning
        assert not (tmp_path / "t.md").exists() and not (tmp_path / "x.png").exists()
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t2\t1\t0:00:00.1\n")
    assert main(["analyze", str(bad)]) == 2
    assert "correct" in capsys.readouterr().err
