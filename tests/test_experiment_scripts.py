"""The experiment scripts: the GPU session's parse what they will be given (they cannot be tried on a GPU
here); bench_sequential's predict section runs on a small case."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from experiment_scripts import EXPERIMENTS, load_experiment  # noqa: E402


def test_bench_certify_variants_parse():
    Variant = load_experiment("bench_certify").Variant
    v = Variant.parse("bf16+fold+batch=250+compile=max-autotune+ipb=3")
    assert (v.precision, v.fold_bn, v.batch, v.compile, v.images_per_batch) == \
        ("bf16", True, 250, "max-autotune", 3)
    assert Variant.parse("fp32") == Variant("fp32", precision="fp32")
    assert Variant.parse("auto+compile").compile is True
    for bad in ("fold=1", "batch=0", "batch=x", "turbo", "bf16+ipb"):
        with pytest.raises(SystemExit, match="bad variant token"):
            Variant.parse(bad)


def test_gpu_call_script_is_valid_bash_and_refuses_an_unknown_step(tmp_path):
    script = EXPERIMENTS / "gpu_call.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    run = subprocess.run(["bash", str(script), "turbo"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PY": "false"})
    assert run.returncode == 2 and "unknown step 'turbo'" in run.stderr
    usage = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr


def test_bench_sequential_predict_section_runs_small():
    bench = load_experiment("bench_sequential")
    args = argparse.Namespace(digits=6, n=500, alpha=0.01, sigma=0.25, batch=500, images_per_batch=3, seed=0,
                              checkpoint=None, dataset="digits", digits_epochs=1)
    out = bench.predict_section(args)
    assert out["images"] == 6 and 0 < out["sequential"]["mean_samples"] <= 500
    assert out["sample_ratio"] == pytest.approx(500 / out["sequential"]["mean_samples"])
    assert 0 <= out["same_prediction"] <= 6
    ties = out["near_ties"]
    assert ties["images"] == 6 and ties["projected"]["mean_samples"] <= ties["unanimous"]["mean_samples"]
    assert ties["projected"]["wrong"] == 0


def test_demo_never_removes_a_directory_it_did_not_make(tmp_path, capsys):
    demo = load_experiment("demo")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_text("keep")
    assert demo.main(["--out", str(victim), "--epochs", "1"]) == 2
    assert (victim / "important.txt").read_text() == "keep"
    err = capsys.readouterr().err
    assert "was not made by the demo" in err and len(err.strip().splitlines()) == 1


def test_demo_replaces_its_own_directory_and_runs_one_epoch(tmp_path):
    demo = load_experiment("demo")
    out = tmp_path / "demo"
    args = ["--out", str(out), "--epochs", "1", "--n", "20", "--skip", "60", "--device", "cpu"]
    assert demo.main(args) == 0                     # one epoch: the lr step is clamped to 1
    (out / "leftover.txt").write_text("from the last run")
    assert demo.main(args) == 0
    assert not (out / "leftover.txt").exists() and (out / "table.md").exists()
