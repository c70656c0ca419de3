"""robustmaxup certify / predict / analyze: rows, sidecar, resume, sharding, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustmaxup.certify import Smooth, analysis
from robustmaxup.checkpoints import save_checkpoint
from robustmaxup.cli import main
from robustmaxup.data import load_split
from robustmaxup.errors import UserError
from robustmaxup.checkpoints import build_model_for as build_model
from robustmaxup.runtime.seeds import stream_generator

FAST = ["--dataset", "digits", "--n0", "20", "--n", "200", "--batch", "100", "--alpha", "0.01",
        "--skip", "45", "--max", "6", "--device", "cpu", "--quiet"]


def _save(path, model, **extra):
    save_checkpoint(path, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                           "model": model.state_dict(), "method": "gaussian",
                           "hparams": {"sigma": 0.25}, "epoch": 1, **extra})
    return str(path)


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint):
    return digits_checkpoint


def _rows(path):
    lines = Path(path).read_text().splitlines()
    return lines[0], [line.rsplit("\t", 1)[0] for line in lines[1:]]  # time column dropped


def test_certify_rows_sidecar_and_recompute_one_row(ckpt, tmp_path):
    out = tmp_path / "c.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(out)]) == 0
    header, rows = _rows(out)
    assert header == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    assert [int(r.split("\t")[0]) for r in rows] == [0, 45, 90, 180, 225, 270]
    assert all(len(line.split("\t")) == 6 for line in out.read_text().splitlines())
    meta = json.loads((tmp_path / "c.tsv.json").read_text())
    assert meta["complete"] and meta["rows"] == 6 and meta["indices"] == [0, 45, 90, 180, 225, 270]
    assert meta["sigma"] == 0.25 and meta["sigma_source"] == "checkpoint"
    assert (meta["n0"], meta["n"], meta["alpha"], meta["seed"]) == (20, 200, 0.01, 0)
    assert meta["full_split"] is False and meta["split_size"] == len(load_split("digits", "test"))
    assert len(meta["checkpoint_sha256"]) == 64 and meta["checkpoint_meta"]["arch"] == "digits_cnn"
    assert "torch" in meta["provenance"] and meta["config"]["n"] == 200
    # any row can be recomputed alone from (seed, idx)
    from robustmaxup.checkpoints import load_model

    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    x, y = split[90]
    cert = Smooth(model, 10, 0.25).certify(x, 20, 200, 0.01, 100, stream_generator(0, "certify.noise", 90))
    assert rows[2] == f"90\t{y}\t{cert.prediction}\t{cert.radius:.6f}\t{int(cert.prediction == y)}"
    assert sum(cert.counts) == 200 and max(cert.counts) < 200  # votes are not trivial


def test_images_per_batch_and_resume_give_identical_rows(ckpt, tmp_path):
    ref = tmp_path / "ref.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(ref)]) == 0
    packed = tmp_path / "packed.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(packed), "--images-per-batch", "4"]) == 0
    assert _rows(packed) == _rows(ref)
    # simulated kill: two complete rows, then half a row without newline
    lines = ref.read_text().splitlines(keepends=True)
    torn = tmp_path / "torn.tsv"
    torn.write_text("".join(lines[:3]) + lines[3][:7])
    assert main(["certify", ckpt, *FAST, "--out", str(torn)]) == 2  # exists, no --resume
    # without its sidecar the file's settings are unknown: refused, untouched
    assert main(["certify", ckpt, *FAST, "--out", str(torn), "--resume"]) == 2
    assert torn.read_text() == "".join(lines[:3]) + lines[3][:7]
    Path(str(torn) + ".json").write_text(Path(str(ref) + ".json").read_text())  # as a kill leaves it
    assert main(["certify", ckpt, *FAST, "--out", str(torn), "--resume", "--images-per-batch", "3"]) == 0
    assert _rows(torn) == _rows(ref)
    assert torn.read_text().splitlines()[1:3] == ref.read_text().splitlines()[1:3]  # kept as written
    # resuming a complete file does nothing; with other settings it is refused
    assert main(["certify", ckpt, *FAST, "--out", str(torn), "--resume"]) == 0
    assert _rows(torn) == _rows(ref)
    assert main(["certify", ckpt, *FAST, "--out", str(torn), "--resume", "--n", "300"]) == 2


def test_predict_rows(ckpt, tmp_path):
    out = tmp_path / "p.tsv"
    argv = [a for a in FAST if a not in ("--n0", "20")]
    assert main(["predict", ckpt, *argv, "--out", str(out)]) == 0
    header, rows = _rows(out)
    assert header == "idx\tlabel\tpredict\tcorrect\ttime"
    from robustmaxup.checkpoints import load_model

    model, _ = load_model(ckpt, dataset="digits")
    x, y = load_split("digits", "test")[45]
    pred = Smooth(model, 10, 0.25).predict(x, 200, 0.01, 100, stream_generator(0, "certify.noise", 45))
    assert rows[1] == f"45\t{y}\t{pred}\t{int(pred == y)}"


def test_other_sigma_warns_once(ckpt, tmp_path, capsys):
    out = tmp_path / "s.tsv"
    assert main(["certify", ckpt, *FAST, "--max", "1", "--sigma", "0.5", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("trained with sigma 0.25") == 1
    assert json.loads((tmp_path / "s.tsv.json").read_text())["sigma"] == 0.5


def _bad_ckpts(tmp_path, ckpt):
    model = build_model("digits_cnn", "digits")
    nan = build_model("digits_cnn", "digits")
    with torch.no_grad():
        nan.net.fc.weight.fill_(float("nan"))
    five = build_model("digits_cnn", "digits", num_classes=5)
    chan = build_model("digits_cnn", "digits", in_channels=3, mean=(0.3,), std=(0.4,))
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    return {
        "missing": str(tmp_path / "nope.pt"),
        "corrupt": str(tmp_path / "corrupt.pt"),
        "nan": _save(tmp_path / "nan.pt", nan.eval()),
        "five": _save(tmp_path / "five.pt", five, num_classes=5),
        "chan": _save(tmp_path / "chan.pt", chan, in_channels=3, mean=[0.3], std=[0.4]),
        "nosigma": _save(tmp_path / "nosigma.pt", model, hparams={}),
        "good": ckpt,
    }


ERRORS = {
    "missing checkpoint": ("missing", [], "does not exist"),
    "corrupt checkpoint": ("corrupt", [], "corrupt"),
    "other dataset": ("good", ["--dataset", "cifar10"], "digits"),
    "class count": ("five", [], "5 classes"),
    "sigma zero": ("good", ["--sigma", "0"], "--sigma"),
    "sigma negative": ("good", ["--sigma", "-0.5"], "--sigma"),
    "alpha zero": ("good", ["--alpha", "0"], "--alpha"),
    "alpha one": ("good", ["--alpha", "1"], "--alpha"),
    "n0": ("good", ["--n0", "0"], "--n0"),
    "n": ("good", ["--n", "0"], "--n"),
    "batch": ("good", ["--batch", "0"], "--batch"),
    "image size": ("chan", [], "does not accept"),
    "non-finite": ("nan", [], "non-finite"),
    "no sigma": ("nosigma", [], "--sigma"),
    "bad precision": ("good", ["--precision", "fp8"], "precision"),
}


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_errors_exit_2_one_line_no_file(ckpt, tmp_path, capsys, command):
    ckpts = _bad_ckpts(tmp_path, ckpt)
    cases = dict(ERRORS)
    if command == "predict":
        cases.pop("n0")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    existing = tmp_path / "exists.tsv"
    existing.write_text("keep me\n")
    cases["unwritable dir"] = ("good", ["--out", str(blocker / "sub" / "o.tsv")], str(blocker))
    cases["exists"] = ("good", ["--out", str(existing)], "--resume")
    for name, (which, extra, needle) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}.tsv"
        argv = [command, ckpts[which], *FAST, "--out", str(out), *extra]
        if command == "predict":
            argv = [a for a in argv if a not in ("--n0", "20")]
        capsys.readouterr()
        assert main(argv) == 2, name
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1, (name, err)
        assert needle in err[0] and "Traceback" not in err[0], (name, err)
        assert not out.exists() and not Path(str(out) + ".json").exists(), name
    assert existing.read_text() == "keep me\n"
    # a failing run creates no output directory either
    assert main([command, ckpt, *FAST, "--n", "0", "--out", str(tmp_path / "newdir" / "o.tsv")]) == 2
    assert not (tmp_path / "newdir").exists()
    assert sorted(p.name for p in tmp_path.glob("*.tsv*")) == ["exists.tsv"]


def test_entry_point_subprocess(ckpt, tmp_path):
    out = tmp_path / "sub.tsv"
    argv = [sys.executable, "-m", "robustmaxup", "certify", ckpt, *FAST, "--max", "2", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.slow
def test_torchrun_two_processes_merge(ckpt, tmp_path):
    ref = tmp_path / "ref.tsv"
    assert main(["certify", ckpt, *FAST, "--out", str(ref)]) == 0
    out = tmp_path / "dist.tsv"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "robustmaxup", "--", "certify", ckpt, *FAST, "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _rows(out) == _rows(ref)
    assert not list(tmp_path.glob("dist.tsv.rank*"))
    meta = json.loads((tmp_path / "dist.tsv.json").read_text())
    assert meta["complete"] and meta["world_size"] == 2


# ----------------------------------------------------------------------------- analyze
def _write_tsv(path, rows):
    text = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    text += "".join(f"{i}\t{y}\t{p}\t{r:.6f}\t{int(p == y)}\t0:00:01.000\n" for i, y, p, r in rows)
    path.write_text(text)
    return path


def test_analysis_numbers(tmp_path):
    # 5 rows: correct r=0.3, correct r=1.0, wrong r=0.8, abstain, correct r=0.0 (exactly at 0)
    path = _write_tsv(tmp_path / "a.tsv", [(0, 1, 1, 0.3), (1, 2, 2, 1.0), (2, 3, 4, 0.8), (3, 5, -1, 0.0),
                                            (4, 6, 6, 0.0)])
    res = analysis.read_certify_tsv(path)
    assert len(res) == 5
    np.testing.assert_allclose(analysis.certified_accuracy(res, [0, 0.3, 0.5, 1.0, 1.5]), [0.6, 0.4, 0.2, 0.2, 0.0])
    assert analysis.average_certified_radius(res) == pytest.approx(1.3 / 5)
    assert analysis.abstain_rate(res) == pytest.approx(0.2)
    # a file claiming an abstention is correct (label -1 == predict -1) is refused, not counted
    odd = _write_tsv(tmp_path / "odd.tsv", [(0, -1, -1, 0.0)])
    with pytest.raises(UserError, match="column label"):
        analysis.read_certify_tsv(odd)


def test_analyze_cli_table_and_plot(tmp_path, capsys):
    a = _write_tsv(tmp_path / "gauss.tsv", [(0, 1, 1, 0.3), (1, 2, 2, 1.0), (2, 3, -1, 0.0), (3, 4, 4, 0.6)])
    b = _write_tsv(tmp_path / "maxup.tsv", [(0, 1, 1, 0.9), (1, 2, 2, 1.2)])
    with open(b, "a") as f:
        f.write("2\t3\t3\t0.5")  # torn last line is ignored
    plot = tmp_path / "curve.png"
    assert main(["analyze", str(a), str(b), "--radii", "0", "0.5", "1", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| radius (>= r) | gauss.tsv | maxup.tsv |" in out
    assert "| 0.5 | 0.500 | 1.000 |" in out and "| 1 | 0.250 | 0.500 |" in out
    assert "| ACR | 0.475 | 1.050 |" in out and "| abstain | 0.250 | 0.000 |" in out
    assert "| images | 4 | 2 |" in out
    assert "radius >= r" in out and "abstentions" in out and "all rows" in out
    assert "gauss.tsv: 4 images" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", str(a), "--format", "csv", "--radii", "0"]) == 0
    assert "radius (>= r),gauss.tsv\n0,0.750\nACR,0.475" in capsys.readouterr().out
    assert main(["analyze", str(a), "--format", "latex", "--radii", "0"]) == 0
    assert "gauss\\_tsv" not in capsys.readouterr().out  # sanity: escaping only where needed
    assert main(["analyze", str(tmp_path / "none.tsv")]) == 2
    capsys.readouterr()
    pred = tmp_path / "pred.tsv"
    pred.write_text("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:00.100\n")
    assert main(["analyze", str(pred), "--quiet", "--format", "csv"]) == 0   # a predict file: its own table
    assert capsys.readouterr().out.startswith("predict,pred.tsv\naccuracy,1.000\nabstain,0.000")
    assert main(["analyze", str(pred), "--radii", "0.5"]) == 2          # would be ignored: refused
    assert "--radii is for certify files" in capsys.readouterr().err


@pytest.mark.parametrize("flag, name, content", [
    ("--out", "other.tsv", b"idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n"),
    ("--out", "attack.tsv", b"idx\tlabel\tclean_correct\trobust_correct\n"),
    ("--plot", "last.png", b"PK\x03\x04checkpoint bytes"),
    ("--out", "config.json", b'{"method": "gaussian", "provenance": {"torch": "2"}}'),
    # found by the resume/odd-output audit: anything that is not analyze's own report
    ("--out", "notes.txt", b"some notes\nline2\n"),
    ("--out", "metrics.jsonl", b'{"epoch": 1, "loss": 2.3}\n{"epoch": 2, "loss": 2.1}\n'),
    ("--out", "data.tar.gz", b"\x1f\x8b\x08\x00 not a report"),
    ("--out", "README.md", b"# My results\n\n| radius (>= r) | mine |\n"),  # a table, but not first
    ("--plot", "paper_fig.png", b"\x89PNG\r\n\x1a\n a figure made elsewhere"),
])
def test_analyze_never_replaces_a_file_that_is_not_its_report(tmp_path, capsys, flag, name, content):
    a = _write_tsv(tmp_path / "a.tsv", [(0, 1, 1, 0.3)])
    target = tmp_path / name
    target.write_bytes(content)
    assert main(["analyze", str(a), flag, str(target)]) == 2
    err = capsys.readouterr().err
    assert f"{flag} {target} exists and is not a report of analyze" in err
    assert err.count("\n") == 1 and target.read_bytes() == content


@pytest.mark.parametrize("table, plot", [("markdown", "curve.png"), ("csv", "curve.pdf"), ("latex", "curve.svg"),
                                         ("markdown", "curve.svgz"), ("csv", "curve.jpg"), ("latex", "curve.tiff"),
                                         ("markdown", "curve.webp"), ("csv", "curve.eps")])
@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_analyze_replaces_its_own_report(tmp_path, capsys, table, plot, quiet):
    a = _write_tsv(tmp_path / "a.tsv", [(0, 1, 1, 0.3)])
    out, plot = tmp_path / f"table.{table}", tmp_path / plot
    for radii in (["0"], ["0", "0.25"]):
        assert main(["analyze", str(a), "--radii", *radii, "--format", table, "--out", str(out),
                     "--plot", str(plot), *quiet]) == 0, capsys.readouterr().err
    assert "0.25" in out.read_text() and plot.stat().st_size > 0
    capsys.readouterr()


def test_analyze_fills_an_empty_file(tmp_path, capsys):
    a = _write_tsv(tmp_path / "a.tsv", [(0, 1, 1, 0.3)])
    (tmp_path / "t.md").touch()
    assert main(["analyze", str(a), "--out", str(tmp_path / "t.md")]) == 0
    assert "| radius (>= r) |" in (tmp_path / "t.md").read_text()
    capsys.readouterr()


def test_analyze_names_every_setting_that_differs():
    """Columns certified at another sigma, n or alpha are flagged, each by name."""
    def one(name, **meta):
        col = np.zeros(1, dtype=np.int64)
        return analysis.CertifyResults(name, name, col, col, col, np.zeros(1), col,
                                       meta={"sigma": 0.25, "n": 100, "alpha": 0.001, **meta})

    assert analysis.differences([one("a.tsv"), one("b.tsv")]) == []
    for key, other in (("alpha", 0.01), ("sigma", 0.5), ("n", 1000)):
        found = analysis.differences([one("a.tsv"), one("b.tsv", **{key: other})])
        assert found == [f"{key} (a.tsv {one('a.tsv').meta[key]}, b.tsv {other})"]


def test_the_subset_note_says_all_not_max_minus_one():
    col = np.zeros(9, dtype=np.int64)

    def note(**meta):
        return analysis.CertifyResults("a", "a", col, col, col, np.zeros(9), col,
                                       meta={"split": "test", "split_size": 360, **meta}).subset_note()

    assert note(skip=40, max=-1) == "9 of 360 test images (skip 40)"
    assert note(skip=1, max=9) == "9 of 360 test images (skip 1, max 9)"
    assert note() == "9 of 360 test images"
    assert note(skip=20, complete=False, num_selected=18) == (
        "9 of 360 test images (skip 20); INCOMPLETE: 9 of the 18 selected images (an interrupted run; "
        "resume=True continues it)")
    assert note(skip=20, complete=True, num_selected=9) == "9 of 360 test images (skip 20)"
