"""experiments/reproduce.py: the plan (each method's recipe, equal budgets, the CIFAR-10 commands)
and, on digits with tiny overrides, that rerunning a command resumes instead of starting over,
that step times come from the records (metrics.jsonl, the TSV's time column), sequential
certification, refusals of another plan's out directory, and ``--fresh``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from robustmaxup.certify.tsv import read_certify
from robustmaxup.train.checkpointing import read_metrics
from experiment_scripts import load_experiment  # noqa: E402


def _reproduce():
    return load_experiment("reproduce")


@pytest.fixture(scope="module")
def rep():
    return _reproduce()


#: digits, 2 epochs on 192 training images, 4 test images at n = 100: seconds per step
TINY = ["--preset", "digits", "--epochs", "2", "--train-flags=--max-train 192 --max-eval 20",
        "--n", "100", "--n0", "20", "--max-images", "4", "--device", "cpu"]
BOTH = ["--methods", "gaussian", "maxup m=4"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results(stem: Path) -> dict:
    return json.loads(Path(f"{stem}.json").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory, rep):
    """A session killed after its first method (run with gaussian alone), then the command with
    gaussian and maxup m=4 on the same out directory."""
    d = tmp_path_factory.mktemp("reproduce")
    out = d / "out"
    assert rep.main([*TINY, "--methods", "gaussian", "--out", str(out), "--results", str(d / "first")]) == 0
    last = out / "gaussian" / "last.pt"
    before = (_sha(last), last.stat().st_mtime_ns)
    assert rep.main([*TINY, *BOTH, "--out", str(out), "--results", str(d / "full")]) == 0
    return SimpleNamespace(dir=d, out=out, gaussian_before=before)


def _copy_runs(src: Path, dst: Path) -> None:
    """The trained run directories of ``src`` (not its TSVs) into a new out directory."""
    for name in ("gaussian", "maxup_m4"):
        shutil.copytree(src / name, dst / name)


def test_cifar10_plan_runs_the_recipes_with_sequential_certification(rep, capsys):
    code = rep.main(["--preset", "cifar10", "--methods", "gaussian", "maxup m=4", "--sigma", "0.25",
                     "--sequential", "--data-root", "data/cifar10", "--max-images", "3",
                     "--train-flags=--max-train 512 --epochs 1", "--out", "runs/never", "--dry-run"])
    assert code == 0 and not Path("runs/never").exists()
    lines = capsys.readouterr().out.splitlines()
    train = [line for line in lines if line.startswith("robustmaxup train ")]
    certify = [line for line in lines if line.startswith("robustmaxup certify ")]
    assert len(train) == len(certify) == 2 and lines[-1].startswith("robustmaxup analyze ")
    assert "--recipe cohen --dataset cifar10 --data-root data/cifar10" in train[0]
    assert "--recipe maxup --dataset cifar10" in train[1]
    for line in train:   # σ = 0.25 is both recipes' own; the extra flags come last but for the run's
        assert "--sigma" not in line and "--max-train 512 --epochs 1 --device auto" in line
        assert line.endswith("--resume")
    for line in certify:
        assert "--skip 20 --n0 100 --sequential --n-max 100000 --radii 0 0.25 0.5 0.75 1.0 --max 3" in line
        assert "--alpha 0.001" in line and "--data-root data/cifar10" in line and line.endswith("--resume")
        assert " --n " not in line


def test_plan_uses_each_methods_recipe_and_scales_for_an_equal_budget(rep):
    args = rep.build_parser().parse_args(["--device", "cpu"])
    rows = rep.plan(rep.PRESETS["cifar10"], list(rep.METHOD_RUNS), args, [])
    assert {label: r["epochs"] for label, r in rows.items()} == {
        "gaussian": 90, "maxup m=4": 90, "maxup m=8": 90, "smoothadv": 150, "smoothmix": 150,
        "consistency": 150, "macer": 440}
    assert rows["macer"]["train"][:3] == ["train", "--recipe", "macer"]
    args.budget = True
    rows = rep.plan(rep.PRESETS["cifar10"], list(rep.METHOD_RUNS), args, [])
    # Gaussian costs 3 forward passes per example; MaxUp m=4 7 (4 no-grad scores + 3); SmoothMix
    # 3·m·T + 6·m = 36 with m = 2, T = 4: 90 Gaussian epochs buy 39 and 8 epochs
    assert rows["maxup m=4"]["relative_cost"] == pytest.approx(7 / 3) and rows["maxup m=4"]["epochs"] == 39
    assert rows["smoothmix"]["epochs"] == 8
    flags = rows["smoothmix"]["flags"]
    assert flags[flags.index("--lr-milestones") + 1:flags.index("--warmup")] == ["3", "5"]  # 51, 101 x 8/150
    assert rows["gaussian"]["epochs"] == 90 and rows["gaussian"]["flags"] == []
    # a σ with its own recipe takes it; otherwise --sigma overrides the recipe's
    assert rep.recipe_for("smoothmix", "0.5") == ("smoothmix_s0.5", [])
    assert rep.recipe_for("macer", "0.5") == ("macer", ["--sigma", "0.5"])
    assert rep.DIGITS_DERIVATION[:2] == ["--dataset", "digits"] and "--arch" in rep.DIGITS_DERIVATION


def test_a_rerun_reuses_the_finished_method_and_completes(finished):
    out, first, full = finished.out, _results(finished.dir / "first"), _results(finished.dir / "full")
    last = out / "gaussian" / "last.pt"
    assert (_sha(last), last.stat().st_mtime_ns) == finished.gaussian_before   # not retrained
    assert full["timings_s"]["gaussian"]["train_s"] == first["timings_s"]["gaussian"]["train_s"]
    assert full["timings_s"]["gaussian"]["certify_s"] == first["timings_s"]["gaussian"]["certify_s"]
    for name in ("gaussian", "maxup_m4"):
        assert len(read_metrics(out / name)) == 2
        assert len(read_certify(out / f"{name}.tsv")[0]) == 4
    assert all(c[-1] == "--resume" for step in full["commands"].values() for c in step.values())
    assert "| gaussian.tsv | maxup_m4.tsv |" in Path(f"{finished.dir / 'full'}.md").read_text()
    assert Path(f"{finished.dir / 'full'}.png").read_bytes()[:4] == b"\x89PNG"  # the plot beside it


def test_b_step_times_come_from_the_records(finished, rep):
    d = finished.dir
    assert rep.main([*TINY, *BOTH, "--out", str(finished.out), "--results", str(d / "again")]) == 0
    full, again = _results(d / "full")["timings_s"], _results(d / "again")["timings_s"]
    for label, name in (("gaussian", "gaussian"), ("maxup m=4", "maxup_m4")):
        epochs = read_metrics(finished.out / name)
        rows = read_certify(finished.out / f"{name}.tsv")[0]
        assert again[label]["train_s"] == pytest.approx(sum(m["epoch_seconds"] for m in epochs), abs=1e-3)
        assert again[label]["certify_s"] == pytest.approx(sum(r.time for r in rows), abs=1e-3)
        assert (again[label]["train_s"], again[label]["certify_s"]) == (full[label]["train_s"], full[label]["certify_s"])
        assert again[label]["epochs_recorded"] == 2 and again[label]["images_recorded"] == 4
        assert set(again[label]["this_call_s"]) == {"train", "certify"}
        assert all(0 < s < 5 for s in again[label]["this_call_s"].values())   # both steps already done
    md = Path(f"{d / 'again'}.md").read_text()
    assert f"gaussian train {full['gaussian']['train_s']:.1f} s (2 epochs)" in md and "# this call:" in md


def _error_line(capsys) -> str:
    """The failing step's one error line: the last line on stderr, the only one naming an error
    (the steps' own progress lines may come before it), and no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "error" in line or "Traceback" in line]
    assert errors == lines[-1:], lines
    return lines[-1]


def test_c_sequential_certification_and_refusals_of_another_plan(finished, rep, tmp_path, capsys):
    out = tmp_path / "out"
    _copy_runs(finished.out, out)
    assert rep.main([*TINY, *BOTH, "--sequential", "--out", str(out), "--results", str(tmp_path / "seq")]) == 0
    res = _results(tmp_path / "seq")
    cert = res["certification"]
    assert cert["mode"] == "sequential" and cert["n_max"] == 100 and cert["radii"][:2] == [0.0, 0.1]
    for label, name in (("gaussian", "gaussian"), ("maxup m=4", "maxup_m4")):
        rows, columns = read_certify(out / f"{name}.tsv")
        assert columns[-1] == "n_used" and len(rows) == 4
        assert cert["mean_n_used"][label] == pytest.approx(sum(r.n_used for r in rows) / 4)
        assert 0 < cert["mean_n_used"][label] <= 100
        assert "--sequential" in res["commands"][label]["certify"]
    md = Path(f"{tmp_path / 'seq'}.md").read_text()
    assert "# certification: sequential" in md and "n_max = 100" in md and "mean samples per image: gaussian" in md
    capsys.readouterr()
    # the same out directory under other settings: refused in one line by the library (fixed n
    # on a sequential TSV; fewer epochs than trained), with its exit code, no traceback
    assert rep.main([*TINY, *BOTH, "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert "is not a certify output" in err and "gaussian.tsv" in err, err
    assert rep.main([*TINY, *BOTH, "--out", str(out), "--epochs", "1"]) == 2
    err = _error_line(capsys)
    assert "2 epochs done, more than the 1 asked for" in err, err


def test_d_fresh_wipes_the_out_directory(finished, rep, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    last = out / "gaussian" / "last.pt"
    stamp = last.stat().st_mtime_ns
    assert rep.main([*TINY, "--methods", "gaussian", "--out", str(out), "--fresh"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "certified_accuracy.png", "gaussian", "gaussian.tsv", "gaussian.tsv.json", "table.md"]
    assert last.stat().st_mtime_ns != stamp and len(read_metrics(out / "gaussian")) == 2   # retrained
    # a directory holding anything else is not deleted
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert rep.main([*TINY, "--methods", "gaussian", "--out", str(out), "--fresh"]) == 2
    err = _error_line(capsys)
    assert "notes.txt" in err and (out / "notes.txt").exists() and last.exists()
