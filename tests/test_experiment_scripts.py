"""The experiment scripts: the GPU session's parse what they will be given (they cannot be tried on a GPU
here); bench_sequential's predict section runs on a small case."""

from __future__ import annotations

import argparse
import json
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


def test_demo_refuses_a_file_as_its_directory_in_one_line(tmp_path, capsys):
    demo = load_experiment("demo")
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    assert demo.main(["--out", str(target), "--epochs", "1"]) == 2
    assert target.read_text() == "keep"
    err = capsys.readouterr().err
    assert "is a file; choose a directory" in err and len(err.strip().splitlines()) == 1


def test_demo_replaces_its_own_directory_and_runs_one_epoch(tmp_path):
    demo = load_experiment("demo")
    out = tmp_path / "demo"
    args = ["--out", str(out), "--epochs", "1", "--n", "20", "--skip", "60", "--device", "cpu"]
    assert demo.main(args) == 0                     # one epoch: the lr step is clamped to 1
    (out / "leftover.txt").write_text("from the last run")
    assert demo.main(args) == 0
    assert not (out / "leftover.txt").exists() and (out / "table.md").exists()


@pytest.mark.slow
def test_bench_certify_quick_records_a_conservative_like_for_like_run(tmp_path, monkeypatch):
    """The reference keeps its own model (Smooth converts one in place on CUDA), is warmed at its
    own batch size, cuDNN autotuning is recorded, and the JSON is written after each model."""
    bench = load_experiment("bench_certify")
    quick = bench.configs(True, argparse.Namespace(images=1, images_per_batch=1, batch=None))[0]
    monkeypatch.setattr(bench, "configs", lambda *a: [{**quick, "batch": 100, "batch_ref": 400}] * 2)
    ref_calls, smooth_models = [], []
    real_ref, real_smooth = bench.reference_certify, bench.Smooth
    monkeypatch.setattr(bench, "reference_certify",
                        lambda model, *a: ref_calls.append((id(model), a[2])) or real_ref(model, *a))
    monkeypatch.setattr(bench, "Smooth", lambda model, *a, **k: smooth_models.append(id(model)) or
                        real_smooth(model, *a, **k))
    out = tmp_path / "c.json"
    assert bench.main(["--quick", "--variants", "fp32", "fp32+fold", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and len(report["results"]) == 2 and report["provenance"]["time"]
    for r in report["results"]:
        assert r["cudnn_benchmark"] is True and len(r["reference_times"]) == 2
        assert all(v["prediction_agreement_with_reference"] == 1.0 for v in r["variants"])
    assert ref_calls[0][1] == 1000  # warm-up at its own batch: 2 x 400 and the ragged 1000 % 400
    first_model_refs = {m for m, _ in ref_calls[:3]}  # warm-up + 2 timed repeats of the first model
    assert len(first_model_refs) == 1 and not first_model_refs & set(smooth_models[:2])
    assert len(set(smooth_models[:2])) == 2  # each variant its own copy


@pytest.mark.slow
def test_bench_train_quick_alternates_and_compares_like_with_like(tmp_path):
    bench = load_experiment("bench_train")
    out = tmp_path / "t.json"
    assert bench.main(["--quick", "--methods", "maxup", "--copies", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["config"]["rounds"] == 3
    assert set(report["results"]) == {bench.REFERENCE, "gaussian", "maxup m=2"}
    assert all(len(r["round_step_s"]) == 3 and r["img_per_s"] > 0 for r in report["results"].values())
    assert bench._baseline("maxup m=4 (compiled)") == "gaussian (compiled)"
    assert report["baselines"]["maxup m=2"] == "gaussian"


@pytest.mark.slow
def test_bench_attack_quick_times_the_torchattacks_loop_and_the_synced_one(tmp_path, monkeypatch):
    bench = load_experiment("bench_attack")
    out = tmp_path / "a.json"
    monkeypatch.setattr("sys.argv", ["bench_attack.py", "--quick", "--repeats", "2", "--out", str(out)])
    bench.main()
    pgd = json.loads(out.read_text())["pgd"]
    assert pgd["max_abs_diff_x_adv"] == 0.0
    assert len(pgd["seconds_reference"]) == len(pgd["seconds_reference_host_sync"]) >= 2


@pytest.mark.parametrize("rc, limit, status, said", [("0", "540", 0, "done in"), ("5", "540", 1, "FAILED: bench"),
                                                      ("0", "5", 3, "cut at the time limit: bench")])
def test_gpu_call_exit_status_says_whether_a_step_failed_or_was_cut(tmp_path, rc, limit, status, said):
    """Found by the reproducibility audit: the script exited 0 whatever its steps did."""
    fake = tmp_path / "fakepy"
    fake.write_text('#!/bin/bash\n[ "$1" = -c ] && { echo cpu; exit 0; }\nexit "$FAKE_RC"\n')
    fake.chmod(0o755)
    run = subprocess.run(["bash", str(EXPERIMENTS / "gpu_call.sh"), "bench"], capture_output=True, text=True,
                         cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PY": str(fake),
                                            "FAKE_RC": rc, "LIMIT": limit})
    assert run.returncode == status, run.stdout + run.stderr
    assert said in run.stdout
