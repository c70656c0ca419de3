"""Details of the benchmark scripts whose numbers go into the README (``experiments/bench_certify.py``,
``bench_train.py``, ``bench_sequential.py``, ``bench_attack.py``), found missing by a mutation
audit: the reference CERTIFY loop (n0 selection, then n estimation, its counting and its bound),
per-image timing with a device sync before each clock read, the ratios against the reference
(best of each side, never inverted), extrapolation to N = 100,000, alternation and like-for-like
inputs, the Variant fields that reach ``Smooth``, peak memory above the base in MiB, the training
rounds' rotation and medians, the printed time/memory ratios against the right Gaussian, the
sequential benchmark's sample and accuracy bookkeeping and its goal check, and the JSON written
after each model/round.

Timings are replaced by scripted clocks and the models by fakes, so every expected value is worked
out by hand from the script's definitions (not copied from running it); nothing here needs a GPU."""

from __future__ import annotations

import argparse
import contextlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from experiment_scripts import script_fixture  # noqa: E402

certify_bench = script_fixture("bench_certify")
train_bench = script_fixture("bench_train")
seq_bench = script_fixture("bench_sequential")
attack_bench = script_fixture("bench_attack")


class Clock:
    """A scripted ``time.perf_counter`` that logs each read (and the syncs) in ``events``."""

    def __init__(self, events, times=None):
        self.events, self.times, self.now = events, list(times or []), 0.0

    def __call__(self):
        self.events.append("clock")
        return self.times.pop(0) if self.times else self.now


def _install_clock(monkeypatch, module, times=None):
    events: list = []
    clock = Clock(events, times)
    monkeypatch.setattr(module.time, "perf_counter", clock)
    monkeypatch.setattr(module, "_sync", lambda device: events.append("sync"))
    return clock, events


class ConstantClass(nn.Module):
    """Logits with class ``cls`` on top, whatever the input; records each batch."""

    def __init__(self, cls, num_classes=5):
        super().__init__()
        self.cls, self.num_classes, self.seen = cls, num_classes, []

    def forward(self, x):
        self.seen.append((x.shape[0], x.detach().clone(), self.training))
        out = torch.zeros(x.shape[0], self.num_classes)
        out[:, self.cls] = 1.0
        return out


# ----------------------------------------------------------------------------- bench_certify
def test_reference_counts_every_sample_in_batches_of_at_most_batch_size(certify_bench):
    model = ConstantClass(2)
    counts = certify_bench._reference_counts(model, torch.zeros(1, 2, 2), 250, 100, 0.25, 5)
    assert counts.tolist() == [0, 0, 250, 0, 0]
    assert [s for s, _, _ in model.seen] == [100, 100, 50]


def test_reference_noise_is_gaussian_with_std_sigma(certify_bench):
    model = ConstantClass(0)
    certify_bench._reference_counts(model, torch.zeros(1, 10, 10), 2000, 2000, 0.5, 5)
    noise = model.seen[0][1]
    assert abs(noise.std().item() - 0.5) < 0.02 and abs(noise.mean().item()) < 0.02


def test_reference_certify_unanimous_radius_is_sigma_phi_inv_of_alpha_to_the_one_over_n(certify_bench):
    # k = n = 100: the one-sided (1 - alpha) Clopper-Pearson lower bound is alpha ** (1 / n)
    model = ConstantClass(3).train()
    c, radius = certify_bench.reference_certify(model, torch.zeros(1, 2, 2), 100, 300, 0.001, 200, 0.25, 5)
    assert c == 3
    assert radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 300)), rel=1e-9)
    assert [s for s, _, _ in model.seen] == [100, 200, 100]          # n0 = 100, then n = 300 in 200 + 100
    assert not model.training and not any(t for _, _, t in model.seen)


def test_reference_certify_selects_on_the_n0_samples_and_estimates_on_fresh_ones(certify_bench):
    class Switch(ConstantClass):  # class 0 on the selection batch, class 1 afterwards
        def forward(self, x):
            self.cls = 0 if not self.seen else 1
            return super().forward(x)

    model = Switch(0)
    assert certify_bench.reference_certify(model, torch.zeros(1, 2, 2), 100, 100, 0.001, 100, 0.25, 5) == (-1, 0.0)


def test_time_reference_is_per_image_and_syncs_before_each_clock_read(certify_bench, monkeypatch):
    clock, events = _install_clock(monkeypatch, certify_bench, [10.0, 16.0])
    monkeypatch.setattr(certify_bench, "reference_certify", lambda *a: events.append("work") or (1, 0.5))
    cfg = {"n0": 100, "n": 1000, "alpha": 0.001, "batch_ref": 500, "sigma": 0.25, "num_classes": 10}
    s, out = certify_bench.time_reference(None, torch.zeros(3, 1, 2, 2), cfg, torch.device("cpu"))
    assert s == pytest.approx(2.0) and out == [(1, 0.5)] * 3
    assert events == ["sync", "clock", "work", "work", "work", "sync", "clock"]


def test_time_ours_groups_images_passes_n0_then_n_and_seeds_each_image(certify_bench, monkeypatch):
    clock, events = _install_clock(monkeypatch, certify_bench, [1.0, 7.0])
    calls = []

    class FakeSmooth:
        def certify_batch(self, group, n0, n, alpha, batch, gens):
            events.append("work")
            calls.append((len(group), n0, n, alpha, batch, [g.initial_seed() for g in gens]))
            return [SimpleNamespace(prediction=7, radius=0.1)] * len(group)

    cfg = {"n0": 100, "n": 1000, "alpha": 0.001, "batch": 500, "images_per_batch": 2}
    s, out = certify_bench.time_ours(FakeSmooth(), torch.zeros(3, 1, 2, 2), cfg, torch.device("cpu"))
    assert s == pytest.approx(2.0) and out == [(7, 0.1)] * 3
    assert calls == [(2, 100, 1000, 0.001, 500, [0, 1]), (1, 100, 1000, 0.001, 500, [2])]
    assert events == ["sync", "clock", "work", "work", "sync", "clock"]


def test_variant_refuses_a_value_on_a_precision_token(certify_bench):
    for bad in ("bf16=1", "fp32=0", "auto=x"):
        with pytest.raises(SystemExit, match="bad variant token"):
            certify_bench.Variant.parse(bad)


class _FakeSmooth:
    made: list = []
    noise_chunk = 30

    def __init__(self, model, num_classes, sigma, **kw):
        self.model, self.kw = model, kw
        _FakeSmooth.made.append(self)


def _run_bench_one(bench, monkeypatch, variants, ref_times, our_times, our_preds, extrapolate_to=None):
    """bench_one with a tiny model and scripted timings: ``our_times[spec]`` per repeat."""
    _FakeSmooth.made = []
    model = nn.Linear(4, 3)
    monkeypatch.setattr(bench, "build_model_for", lambda arch, dataset: model)
    monkeypatch.setattr(bench, "Smooth", _FakeSmooth)
    log: list = []
    ref_out = [(1, 0.1), (2, 0.2), (0, 0.3)]
    monkeypatch.setattr(bench, "reference_certify", lambda m, x, n0, n, *a: log.append(("warm-ref", id(m), n)))

    def fake_time_reference(m, xs, cfg, device):
        log.append(("ref", id(m), len(xs), cfg["n"]))
        return ref_times[sum(e[0] == "ref" for e in log) - 1], ref_out

    def fake_time_ours(smooth, xs, cfg, device):
        spec = next(v for v in variants if _FakeSmooth.made[variants.index(v)] is smooth)
        log.append(("ours", spec, len(xs), cfg["n"], cfg["batch"], cfg["images_per_batch"]))
        if (len(xs), cfg["n"]) != (3, 1000):  # a warm-up
            return 0.0, []
        k = sum(e[0] == "ours" and e[1] == spec and e[2:4] == (3, 1000) for e in log) - 1
        return our_times[spec][k], our_preds[spec]

    monkeypatch.setattr(bench, "time_reference", fake_time_reference)
    monkeypatch.setattr(bench, "time_ours", fake_time_ours)
    cfg = {"name": "toy", "arch": "x", "dataset": "y", "shape": (4,), "num_classes": 3, "n": 1000,
           "n0": 100, "alpha": 0.001, "sigma": 0.25, "batch": 200, "batch_ref": 300, "images": 3,
           "images_per_batch": 1}
    if extrapolate_to:
        cfg["extrapolate_to"] = extrapolate_to
    args = argparse.Namespace(variants=variants, repeats=len(ref_times), profile=None)
    return bench.bench_one(cfg, torch.device("cpu"), args), log, model


def test_bench_one_ratio_is_the_median_of_paired_rounds_for_the_fastest_variant(certify_bench, monkeypatch):
    variants = ["fp32", "bf16+fold+batch=50+ipb=2+compile=max-autotune", "auto"]
    times = {"fp32": [1.0, 0.5, 0.9], variants[1]: [0.4, 0.8, 0.6], "auto": [1.0, 1.0, 1.0]}
    preds = {"fp32": [(1, 0.1), (2, 0.2), (0, 0.3)], variants[1]: [(1, 0.1), (2, 0.2), (1, 0.3)],
             "auto": [(1, 0.1)] * 3}
    r, log, model = _run_bench_one(certify_bench, monkeypatch, variants, [3.0, 2.0, 4.0], times, preds,
                                   extrapolate_to=10_000)
    assert r["reference_s_per_image"] == 2.0 and r["reference_median_s_per_image"] == 3.0
    assert r["reference_times"] == [3.0, 2.0, 4.0]
    assert r["reference_s_per_image_at_target_n"] == pytest.approx(20.0)       # x 10,000 / 1,000
    fp32, fast, auto = r["variants"]
    assert auto["speedup"] == 3.0 and auto["speedup_paired"] == [3.0, 2.0, 4.0]   # reference / ours, per round
    assert auto["speedup_best_over_best"] == 2.0
    assert (fp32["s_per_image"], fp32["median_s_per_image"], fp32["speedup"]) == (0.5, 0.9, 4.0)
    assert fp32["s_per_image_at_target_n"] == pytest.approx(5.0)
    assert fp32["prediction_agreement_with_reference"] == 1.0
    assert (fast["s_per_image"], fast["median_s_per_image"]) == (0.4, 0.6)
    assert fast["speedup"] == pytest.approx(4.0 / 0.6) and fast["speedup_best_over_best"] == 5.0  # 7.5, 2.5, 6.67
    assert fast["prediction_agreement_with_reference"] == pytest.approx(2 / 3)
    assert (fast["batch"], fast["images_per_batch"], fast["fold_bn"], fast["precision"], fast["compile"]) == \
        (50, 2, True, "bf16", "max-autotune")
    assert (fp32["batch"], fp32["images_per_batch"], fp32["fold_bn"], fp32["precision"]) == (200, 1, False, "fp32")
    assert r["best_variant"] == variants[1]
    assert (r["ours_s_per_image"], r["speedup"], r["ours_s_per_image_at_target_n"]) == \
        (0.4, pytest.approx(4.0 / 0.6), pytest.approx(4.0))
    # each Smooth gets its own copy of the model, with the variant's settings
    assert [s.kw for s in _FakeSmooth.made] == [
        {"precision": "fp32", "compile": False, "fold_bn": False},
        {"precision": "bf16", "compile": "max-autotune", "fold_bn": True},
        {"precision": "auto", "compile": False, "fold_bn": False}]
    assert len({id(s.model) for s in _FakeSmooth.made} | {id(model)}) == 4


def test_bench_one_warms_every_side_then_alternates_on_the_same_images(certify_bench, monkeypatch):
    variants = ["fp32", "fp32+fold+batch=50+ipb=2"]
    times = {v: [1.0, 1.0] for v in variants}
    preds = {v: [(1, 0.1)] * 3 for v in variants}
    r, log, model = _run_bench_one(certify_bench, monkeypatch, variants, [2.0, 2.0], times, preds)
    ref_id = log[0][1]
    # warm-ups meet every shape of the timed runs: two rounds and the ragged one; each packing
    assert log[0] == ("warm-ref", ref_id, 700) and ref_id != id(model)      # 2 x 300 + 1000 % 300
    assert log[1:4] == [("ours", "fp32", 1, 460, 200, 1),       # rounds of 6 x 30: 2 x 180 + 1000 % 180
                        ("ours", variants[1], 2, 70, 50, 2),    # 2 images: 1 x 30 per round; 60 + 10
                        ("ours", variants[1], 1, 70, 50, 2)]    # the last group, 1 image: 50 // 30 = 1
    timed = [("ref", ref_id, 3, 1000), ("ours", "fp32", 3, 1000, 200, 1), ("ours", variants[1], 3, 1000, 50, 2)]
    assert log[4:] == timed * 2
    assert r["reference_s_per_image_at_target_n"] == 2.0 and r["variants"][0]["s_per_image_at_target_n"] == 1.0


def test_warmup_sizes_cover_every_round_and_packing(certify_bench):
    b = certify_bench
    assert b.warmup_n(100_000, 1000) == 2000 and b.warmup_n(10_000, 4000) == 10_000   # 8,000 + 2,000 > n
    assert b.warmup_n(1000, 300) == 700 and b.warmup_n(500, 1000) == 500
    assert b.warmup_groups(4, 1) == [1] and b.warmup_groups(4, 2) == [2] and b.warmup_groups(5, 2) == [2, 1]
    assert b.warmup_groups(3, 8) == [3]
    smooth = SimpleNamespace(noise_chunk=100)
    assert b.our_round(smooth, 1000, 1) == 1000 and b.our_round(smooth, 1000, 4) == 200
    assert b.our_round(smooth, 1000, 16) == 100 and b.our_round(smooth, 250, 1) == 200


def test_full_configs_are_like_for_like_at_the_stated_n(certify_bench):
    args = argparse.Namespace(images=4, images_per_batch=1, batch=1234, batch_imagenet=321)
    cifar, imagenet = certify_bench.configs(False, args)
    for c in (cifar, imagenet):
        assert (c["alpha"], c["sigma"], c["n0"], c["batch_ref"], c["images"]) == (0.001, 0.25, 100, 1000, 4)
    assert (cifar["arch"], cifar["n"], cifar["batch"], cifar.get("extrapolate_to")) == \
        ("cifar_resnet110", 100_000, 1234, None)
    assert (imagenet["arch"], imagenet["n"], imagenet["batch"], imagenet["extrapolate_to"]) == \
        ("resnet50", 10_000, 321, 100_000)


def test_main_writes_the_json_after_each_model_and_marks_it_complete_at_the_end(certify_bench, monkeypatch, tmp_path):
    written, seen_cfgs = [], []
    monkeypatch.setattr(certify_bench, "atomic_write_json", lambda path, obj: written.append(json.loads(
        json.dumps(obj, default=str))))

    def fake_bench_one(cfg, device, args):
        seen_cfgs.append(cfg)
        return {**cfg, "reference_s_per_image": 1.0, "reference_s_per_image_at_target_n": 10.0, "variants": []}

    monkeypatch.setattr(certify_bench, "bench_one", fake_bench_one)
    assert certify_bench.main(["--device", "cpu", "--out", str(tmp_path / "c.json")]) == 0
    assert [w["complete"] for w in written] == [False, True]
    assert [len(w["results"]) for w in written] == [1, 2]
    assert all(c["images"] == 4 for c in seen_cfgs)                    # the full run's default
    assert "device" in written[-1]["provenance"] and "git_dirty" in written[-1]["provenance"]


# ----------------------------------------------------------------------------- bench_train
def test_train_time_is_per_step_and_syncs_before_each_clock_read(train_bench, monkeypatch):
    clock, events = _install_clock(monkeypatch, train_bench, [2.0, 2.9])
    s = train_bench._time(lambda: events.append("step"), torch.device("cpu"), 3)
    assert s == pytest.approx(0.3)
    assert events == ["sync", "clock", "step", "step", "step", "sync", "clock"]


def test_build_warms_up_and_has_no_peak_memory_on_cpu(train_bench):
    calls = []
    step, peak = train_bench._build(lambda: (lambda: calls.append(1)), torch.device("cpu"), 3)
    assert len(calls) == 3 and peak is None


def test_build_peak_memory_is_mib_above_what_was_allocated_before(train_bench, monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100 * 2**20)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 400 * 2**20)
    _, peak = train_bench._build(lambda: events.append("build") or (lambda: events.append("step")),
                                 torch.device("cuda"), 1)
    # measured over steady-state steps after the warm-up: autotuning scratch is no step's memory
    assert peak == pytest.approx(300.0) and events == ["build", "step", "reset", "step", "step"]


def _run_train_bench(bench, monkeypatch, **kw):
    made, warm, timed, writes = [], {}, [], []
    script = {bench.REFERENCE: [0.4, 0.2, 0.3], "gaussian": [0.1, 0.3, 0.2], "maxup m=2": [0.5, 0.1, 0.3]}

    def step_for(label):
        return lambda: warm.__setitem__(label, warm.get(label, 0) + 1)

    def fake_ref(split, arch, batch, sigma, device, workers):
        made.append((bench.REFERENCE, "gaussian", {"sigma": sigma}, False))
        warm["reference workers"] = workers
        return step_for(bench.REFERENCE)

    def fake_ours(split, arch, batch, method, hp, device, stack, compile=False):
        label = next(lbl for lbl, m, h in bench.configurations(0.25, [2, 4, 8]) if (m, h) == (method, hp))
        label += " (compiled)" if compile else ""
        made.append((label, method, hp, compile))
        return step_for(label)

    def fake_time(step, device, steps):
        label = next(lbl for lbl in built if step is built[lbl])
        timed.append(label)
        return (script.get(label, []) + [1.0] * 9)[sum(t == label for t in timed) - 1]

    built: dict = {}
    real_build = bench._build

    def spy_build(factory, device, warmup):
        step, peak = real_build(factory, device, warmup)
        built[made[-1][0]] = step
        return step, peak

    monkeypatch.setattr(bench, "synthetic_split", lambda n, seed=0: n)
    monkeypatch.setattr(bench, "reference_step_factory", fake_ref)
    monkeypatch.setattr(bench, "our_step_factory", fake_ours)
    monkeypatch.setattr(bench, "_time", fake_time)
    monkeypatch.setattr(bench, "_build", spy_build)
    monkeypatch.setattr(bench, "_report", lambda *a: None)
    monkeypatch.setattr(bench, "_write", lambda out, config, results, device, complete: writes.append(
        (complete, json.loads(json.dumps(results)), config)))
    args = argparse.Namespace(**{"quick": False, "device": "cpu", "arch": "toy", "batch": None, "steps": None,
                                 "rounds": None, "warmup": None, "copies": None, "methods": None, "workers": 0,
                                 "compile": False, "out": "x.json", **kw})
    with contextlib.ExitStack() as stack:
        bench._bench(args, stack)
    return made, warm, timed, writes


def test_train_rounds_rotate_and_report_the_median_round(train_bench, monkeypatch):
    made, warm, timed, writes = _run_train_bench(train_bench, monkeypatch, batch=8, steps=2, rounds=3, warmup=1,
                                                 copies=[2], methods=["maxup"])
    ref = train_bench.REFERENCE
    assert timed == [ref, "gaussian", "maxup m=2", "gaussian", "maxup m=2", ref, "maxup m=2", ref, "gaussian"]
    assert [w[0] for w in writes] == [False, False, False, True]         # after the builds, then each round
    final = writes[-1][1]
    assert final[ref]["round_step_s"] == [0.4, 0.2, 0.3]
    assert final[ref]["step_s"] == pytest.approx(0.3) and final[ref]["img_per_s"] == pytest.approx(8 / 0.3)
    assert final["gaussian"]["step_s"] == pytest.approx(0.2) and final["gaussian"]["img_per_s"] == pytest.approx(40)
    assert final["maxup m=2"]["step_s"] == pytest.approx(0.3)
    assert warm == {ref: 1, "gaussian": 1, "maxup m=2": 1, "reference workers": 0}
    # like for like: the reference's noise is our Gaussian's sigma; each factory its own method
    assert made == [(ref, "gaussian", {"sigma": 0.25}, False), ("gaussian", "gaussian", {"sigma": 0.25}, False),
                    ("maxup m=2", "maxup", {"sigma": 0.25, "copies": 2}, False)]


def test_train_compile_adds_compiled_gaussian_and_maxup_m4_warmed_two_more_steps(train_bench, monkeypatch):
    made, warm, timed, writes = _run_train_bench(train_bench, monkeypatch, batch=8, steps=1, rounds=1, warmup=1,
                                                 copies=[4], methods=["maxup"], compile=True)
    assert [m[0] for m in made] == [train_bench.REFERENCE, "gaussian", "maxup m=4", "gaussian (compiled)",
                                    "maxup m=4 (compiled)"]
    assert [m[3] for m in made] == [False, False, False, True, True]
    assert warm["gaussian (compiled)"] == 3 and warm["maxup m=4 (compiled)"] == 3 and warm["gaussian"] == 1


def test_train_full_defaults(train_bench, monkeypatch):
    made, warm, timed, writes = _run_train_bench(train_bench, monkeypatch, methods=["maxup"], workers=4)
    config = writes[-1][2]
    assert config["workers"] == 4 and warm["reference workers"] == 4       # the reference's loader as asked
    assert (config["batch"], config["steps"], config["rounds"], config["warmup"], config["copies"]) == \
        (256, 5, 5, 5, [2, 4, 8])
    assert config["arch"] == "toy" and len(writes) == 6


def test_configurations_put_gaussian_first_then_maxup_at_each_m(train_bench):
    rows = train_bench.configurations(0.5, [2, 8])
    assert rows[:3] == [("gaussian", "gaussian", {"sigma": 0.5}), ("maxup m=2", "maxup", {"sigma": 0.5, "copies": 2}),
                        ("maxup m=8", "maxup", {"sigma": 0.5, "copies": 8})]


def test_train_report_prints_ratios_against_the_reference_and_the_right_gaussian(train_bench, monkeypatch, capsys):
    monkeypatch.setattr(train_bench, "provenance", lambda device: {"device": "fake"})
    results = {
        train_bench.REFERENCE: {"img_per_s": 100.0, "step_s": 0.08, "peak_mib": None},
        "gaussian": {"img_per_s": 400.0, "step_s": 0.02, "peak_mib": 100.0},
        "maxup m=4": {"img_per_s": 200.0, "step_s": 0.04, "peak_mib": 120.0},
        "gaussian (compiled)": {"img_per_s": 800.0, "step_s": 0.01, "peak_mib": 90.0},
        "maxup m=4 (compiled)": {"img_per_s": 1600 / 3, "step_s": 0.015, "peak_mib": 99.0},
    }
    train_bench._report(results, "toy", 8, 1, 1, torch.device("cpu"))
    lines = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()[3:]}
    assert lines["maxup m=4"] == ["200.0", "2.00x", "2.00x", "1.20x"]
    assert lines["maxup m=4 (compiled)"] == ["533.3", "5.33x", "1.50x", "1.10x"]
    assert lines["gaussian"] == ["400.0", "4.00x", "1.00x", "1.00x"]
    assert lines[train_bench.REFERENCE] == ["100.0", "1.00x", "4.00x", "n/a"]


def test_train_json_records_baselines_and_the_device(train_bench, tmp_path):
    out = tmp_path / "t.json"
    train_bench._write(str(out), {"batch": 8}, {"maxup m=4 (compiled)": {}}, torch.device("cpu"), complete=False)
    report = json.loads(out.read_text())
    assert report["baselines"] == {"maxup m=4 (compiled)": "gaussian (compiled)"} and not report["complete"]
    assert "device" in report["provenance"] and "git_sha" in report["provenance"]


# ----------------------------------------------------------------------------- bench_sequential
def test_summarize_hand_worked(seq_bench):
    res = {"pred": np.array([1, 1, -1, 0]), "radius": np.array([0.5, 0.25, 0.0, 0.9]),
           "n_used": np.array([100, 300, 1000, 200])}
    s = seq_bench.summarize(res, np.array([1, 1, 1, 1]), (0.25, 0.5, 0.75, 1.0), 2.0)
    assert (s["images"], s["mean_samples"], s["median_samples"]) == (4, 400.0, 250.0)
    assert s["p90_samples"] == pytest.approx(790.0)                     # 300 + 0.7 * (1000 - 300)
    assert s["certified_accuracy"] == {"0.25": 0.5, "0.5": 0.25, "0.75": 0.0, "1.0": 0.0}
    assert (s["abstain_rate"], s["wall_s"], s["s_per_image"]) == (0.25, 2.0, 0.5)


def _summary(mean, median, acc, wall=None):
    out = {"mean_samples": mean, "median_samples": median,
           "certified_accuracy": {str(r): a for r, a in zip((0.25, 0.5), acc)}}
    if wall is not None:
        out["wall_s"] = wall
    return out


def test_compare_ratios_points_and_goal(seq_bench):
    radii = (0.25, 0.5)
    c = seq_bench.compare(_summary(10_000, 10_000, [0.8, 0.6], 30.0), _summary(1000, 500, [0.797, 0.6], 10.0), radii)
    assert (c["samples_ratio_mean"], c["samples_ratio_median"], c["wall_ratio"]) == (10.0, 20.0, 3.0)
    assert c["accuracy_diff_points"]["0.25"] == pytest.approx(-0.3) and c["goal_met"]     # x10 exactly: met
    worse = seq_bench.compare(_summary(10_000, 10_000, [0.8, 0.6]), _summary(500, 500, [0.794, 0.6]), radii)
    assert worse["accuracy_diff_points"]["0.25"] == pytest.approx(-0.6) and not worse["goal_met"]
    assert "wall_ratio" not in worse
    assert not seq_bench.compare(_summary(10_000, 1, [0.8, 0.6]), _summary(1001, 1, [0.8, 0.6]), radii)["goal_met"]


class MinusOneRng:
    """binomial(n, p): ``first`` on the first call (the n0 selection), then n - 1 per draw of n > 0."""

    def __init__(self, first):
        self.first = first

    def binomial(self, n, p):
        if self.first is not None:
            out, self.first = np.asarray(self.first), None
            return out
        n = np.broadcast_to(np.asarray(n), np.shape(p)) if np.ndim(p) else np.asarray(n)
        return np.where(n > 0, n - 1, 0)


def _cp_lower(k, n, alpha):
    return beta.ppf(alpha, k, n - k + 1)


def test_simulate_continues_the_sequential_stream_to_n_for_fixed_n(seq_bench):
    from robustmaxup.certify import bounds

    seq, n, alpha, sigma = bounds.confidence_sequence(), 3000, 0.001, 0.25
    cfg = {"n0": 100, "n": n, "alpha": alpha, "sigma": sigma, "radii": (0.25, 0.5)}
    res = seq_bench.simulate(np.array([0.99, 0.99]), seq, cfg, MinusOneRng([90, 90]))
    looks = list(seq.schedule(n, 100))
    assert res["fixed"]["n_used"].tolist() == [n, n]
    for i in range(2):
        used = int(res["sequential"]["n_used"][i])
        assert used in looks
        draws = looks.index(used) + 1                       # one vote lost per look, one more after it
        k_fixed = n - draws - (1 if used < n else 0)
        p = _cp_lower(k_fixed, n, alpha)
        assert res["fixed"]["radius"][i] == pytest.approx(sigma * norm.ppf(p), rel=1e-6)
        assert res["fixed"]["pred"][i] == 1 and res["sequential"]["pred"][i] == 1


def test_simulate_breaks_a_selection_tie_towards_class_zero(seq_bench):
    from robustmaxup.certify import bounds

    cfg = {"n0": 100, "n": 1000, "alpha": 0.001, "sigma": 0.25, "radii": (0.25,)}
    res = seq_bench.simulate(np.array([0.0]), bounds.confidence_sequence(), cfg, MinusOneRng([50]))
    assert res["fixed"]["pred"].tolist() == [0] and res["sequential"]["pred"].tolist() == [0]
    assert res["fixed"]["radius"][0] > 0


def test_simulate_default_futility_is_projected(seq_bench):
    from robustmaxup.certify import bounds

    p = seq_bench.population(60, np.random.default_rng(3))
    cfg = {"n0": 100, "n": 20_000, "alpha": 0.001, "sigma": 0.25, "radii": seq_bench.RADII}
    seq = bounds.confidence_sequence()
    used = {f: seq_bench.simulate(p, seq, {**cfg, **({"futility": f} if f else {})},
                                  np.random.default_rng(4))["sequential"]["n_used"].tolist()
            for f in (None, "projected", "unanimous")}
    assert used[None] == used["projected"] != used["unanimous"]


def test_population_mixture_fractions(seq_bench):
    p = seq_bench.population(40_000, np.random.default_rng(0))
    assert abs(np.mean(p == 1.0) - 0.46) < 0.01
    assert abs(np.mean(p < 0.6) - 0.08) < 0.01 and abs(np.mean(p < 0.5) - 0.08 * 2 / 3) < 0.01
    assert p.min() >= 0.3 and abs(np.mean((p > 0.6) & (p < 0.97)) - 0.17) < 0.01


def test_run_smooth_same_seeds_for_both_modes_and_each_sequence_by_name(seq_bench, monkeypatch):
    from robustmaxup.certify import bounds

    clock, events = _install_clock(monkeypatch, seq_bench)
    calls = []

    class FakeSmooth:
        def certify_batch(self, group, n0, n, alpha, batch, gens):
            calls.append(("fixed", n0, n, batch, [g.initial_seed() for g in gens]))
            clock.now += 6.0
            return [SimpleNamespace(prediction=1, radius=0.3, n_used=n)] * len(group)

        def certify_sequential_batch(self, group, n0, n_max, alpha, batch, gens, radii, sequence):
            calls.append((sequence, n0, n_max, batch, [g.initial_seed() for g in gens]))
            clock.now += 2.0
            used = 100 if sequence == bounds.DEFAULT_SEQUENCE else 250
            return [SimpleNamespace(prediction=1, radius=0.3, n_used=used)] * len(group)

    args = argparse.Namespace(images_per_batch=2, n0=100, n=1000, alpha=0.001, batch=500, also_sequences="mixture")
    out = seq_bench.run_smooth(FakeSmooth(), torch.zeros(3, 1, 1, 2), np.ones(3, dtype=int), args, seed=50)
    assert calls == [(m, 100, 1000, 500, s) for m in ("fixed", bounds.DEFAULT_SEQUENCE, "mixture")
                     for s in ([50, 51], [52])]
    assert out["compare"]["samples_ratio_mean"] == 10.0 and out["compare"]["wall_ratio"] == 3.0
    assert out["compare:sequential:mixture"]["samples_ratio_mean"] == 4.0
    assert out["fixed"]["wall_s"] == 12.0 and out["fixed"]["s_per_image"] == 4.0
    assert events == ["sync", "clock", "sync", "clock"] * 3


def test_predict_section_counts_and_ratios(seq_bench, monkeypatch):
    from robustmaxup.certify.smooth import Prediction

    clock, _ = _install_clock(monkeypatch, seq_bench)
    monkeypatch.setattr(seq_bench, "_images", lambda *a: (torch.zeros(3, 1, 2, 2), np.array([1, 2, 3])))
    monkeypatch.setattr(seq_bench, "_digits_model", lambda args: None)
    monkeypatch.setattr(seq_bench, "predict_ties", lambda args: {})

    class FakeSmooth:
        def __init__(self, *a):
            pass

        def predict_batch(self, xs, n, alpha, batch, gens):
            clock.now += 8.0
            return [1, -1, -1][:len(xs)] if len(xs) == 3 else None

        def predict_sequential_details(self, xs, n, alpha, batch, gens, futility="projected"):
            clock.now += 2.0
            used = [100, 300, 200] if futility == "projected" else [400, 400, 400]
            return [Prediction(1, used[0]), Prediction(-1, used[1]), Prediction(3, used[2])]

    monkeypatch.setattr(seq_bench, "Smooth", FakeSmooth)
    args = argparse.Namespace(digits=3, n=1000, alpha=0.001, batch=500, images_per_batch=3, seed=0, sigma=0.25)
    out = seq_bench.predict_section(args)
    assert out["fixed"] == {"mean_samples": 1000.0, "abstain": 2, "accuracy": 1 / 3, "wall_s": 8.0}
    assert out["sequential"]["mean_samples"] == 200.0 and out["sequential"]["abstain"] == 1
    assert out["sequential"]["accuracy"] == pytest.approx(2 / 3) and out["sequential"]["wall_s"] == 2.0
    assert (out["same_prediction"], out["sample_ratio"], out["wall_ratio"]) == (2, 5.0, 4.0)
    assert out["unanimous_futility"] == {"mean_samples": 400.0, "same_prediction": 3}


def test_predict_ties_ratio_is_unanimous_over_projected_and_abstentions_are_not_wrong(seq_bench, monkeypatch):
    from robustmaxup.certify.smooth import Prediction

    class FakeSmooth:
        def __init__(self, *a):
            pass

        def predict_sequential_details(self, xs, n, alpha, batch, gens, futility):
            used = 400 if futility == "unanimous" else 100
            return [Prediction(p, used) for p in [1, -1, 0][:len(xs)]]

    monkeypatch.setattr(seq_bench, "Smooth", FakeSmooth)
    args = argparse.Namespace(digits=3, n=1000, alpha=0.001, batch=500, images_per_batch=3, seed=0, sigma=0.25)
    out = seq_bench.predict_ties(args)
    assert out["sample_ratio"] == 4.0 and out["same_prediction"] == 3
    assert (out["projected"]["decided"], out["projected"]["wrong"]) == (2, 1)


# ----------------------------------------------------------------------------- bench_attack
def test_attack_time_syncs_before_each_clock_read(attack_bench, monkeypatch):
    clock, events = _install_clock(monkeypatch, attack_bench, [3.0, 3.5])
    assert attack_bench._time(lambda: events.append("work"), torch.device("cpu")) == 0.5
    assert events == ["sync", "clock", "work", "sync", "clock"]


def test_bench_pgd_ratios_are_ours_over_each_reference_from_median_times(attack_bench, monkeypatch):
    clock, _ = _install_clock(monkeypatch, attack_bench)
    costs = {"ours": [0, 0, 1.0, 3.0, 2.0], "ref": [0, 2.0, 6.0, 4.0], "sync": [0, 8.0, 8.0, 12.0]}
    seen = []

    def fake_pgd(model, x, y, *, eps, steps, step_size, delta_init):
        seen.append((step_size, float(delta_init.abs().max())))
        clock.now += costs["ours"].pop(0)
        return x

    def fake_ref(model, x, y, *, eps, alpha, steps, delta0, host_sync=False):
        clock.now += costs["sync" if host_sync else "ref"].pop(0)
        return x, []

    monkeypatch.setattr(attack_bench, "pgd", fake_pgd)
    monkeypatch.setattr(attack_bench, "reference_pgd", fake_ref)
    x = torch.zeros(8, 3, 2, 2)
    r = attack_bench.bench_pgd(None, x, None, eps=0.1, steps=4, repeats=3, device=torch.device("cpu"))
    assert r["step_size"] == pytest.approx(0.0625) and seen[0][0] == pytest.approx(0.0625) and seen[0][1] <= 0.1
    assert (r["images_per_s_ours"], r["images_per_s_reference"], r["images_per_s_reference_host_sync"]) == (4, 2, 1)
    assert (r["speedup_ours_over_reference"], r["speedup_ours_over_reference_host_sync"]) == (2.0, 4.0)
    assert (r["seconds_ours"], r["seconds_reference"], r["seconds_reference_host_sync"]) == \
        ([1.0, 3.0, 2.0], [2.0, 6.0, 4.0], [8.0, 8.0, 12.0])


def test_bench_autoattack_seconds_per_thousand_images(attack_bench, monkeypatch):
    clock, events = _install_clock(monkeypatch, attack_bench)

    def fake_aa(model, x, y, *, eps, version, batch_size, seed):
        events.append("attack")
        clock.now += 5.0
        return SimpleNamespace(seconds={"apgd-ce": 5.0}, stages={"clean": torch.tensor([True, False, True, True])})

    monkeypatch.setattr(attack_bench, "run_autoattack", fake_aa)
    r = attack_bench.bench_autoattack(nn.Flatten(), torch.zeros(4, 3), eps=0.1, batch=4)
    assert (r["images"], r["seconds"], r["seconds_per_1000_images"]) == (4, 5.0, 1250.0)
    assert events == ["sync", "clock", "attack", "sync", "clock"]  # the device is idle at both reads
    assert r["robust_accuracy_after"] == {"clean": 0.75}


def _fake_pgd_bench(attack_bench, monkeypatch, seen: dict) -> None:
    """bench_attack's model and PGD timing replaced: ``seen["pgd"]`` records (images, kwargs)."""
    monkeypatch.setattr(attack_bench, "build_model_for", lambda *a, **k: nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)))
    monkeypatch.setattr(attack_bench, "bench_pgd", lambda model, x, y, **k: seen.update(pgd=(len(x), k)) or {
        "images_per_s_ours": 1.0, "images_per_s_reference": 1.0, "speedup_ours_over_reference": 1.0,
        "speedup_ours_over_reference_host_sync": 1.0, "max_abs_diff_x_adv": 0.0})


def test_attack_main_records_the_subset_batch_and_device(attack_bench, monkeypatch, tmp_path):
    seen = {}
    _fake_pgd_bench(attack_bench, monkeypatch, seen)
    monkeypatch.setattr(attack_bench, "bench_autoattack", lambda model, x, **k: seen.update(aa=(len(x), k)) or {
        "images": len(x), "seconds": 1.0, "seconds_per_1000_images": 1.0, "seconds_per_attack": {}})
    out = tmp_path / "a.json"
    monkeypatch.setattr("sys.argv", ["bench_attack.py", "--device", "cpu", "--batch", "600", "--aa-images", "3",
                                     "--steps", "7", "--out", str(out)])
    attack_bench.main()
    assert seen["pgd"] == (600, {"eps": 8 / 255, "steps": 7, "repeats": 5, "device": torch.device("cpu")})
    assert seen["aa"] == (3, {"eps": 8 / 255, "batch": 500})
    report = json.loads(out.read_text())
    assert "device" in report["provenance"] and report["config"]["batch"] == 600
    out.unlink()  # without --out nothing is written (a smoke run never lands among the results)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bench_attack.py", "--device", "cpu", "--batch", "600"])
    attack_bench.main()
    assert list(tmp_path.rglob("*.json")) == []


class FirstLookOnlyRng:
    """binomial: ``first`` for the n0 selection, every vote at the first look, none afterwards."""

    def __init__(self, first):
        self.calls, self.first = 0, first

    def binomial(self, n, p):
        self.calls += 1
        if self.calls == 1:
            return np.asarray(self.first)
        return np.broadcast_to(np.asarray(n), np.shape(p)).copy() if self.calls == 2 else np.zeros(np.shape(p), int)


def test_simulate_keeps_the_best_lower_bound_seen_at_any_look(seq_bench):
    from robustmaxup.certify import bounds

    seq, n, alpha, sigma = bounds.confidence_sequence(), 10_000, 0.001, 0.1
    looks = seq.schedule(n, 100)
    cfg = {"n0": 100, "n": n, "alpha": alpha, "sigma": sigma, "radii": (0.25,)}
    res = seq_bench.simulate(np.array([0.9]), seq, cfg, FirstLookOnlyRng([100]))
    first = float(seq.lower(np.array([[looks[0]]]), np.array([looks[0]]), alpha, looks)[0])
    assert 0.5 < first < norm.cdf(2.5)                       # the first look decides nothing
    assert res["sequential"]["n_used"][0] > looks[0]
    assert res["sequential"]["radius"][0] == pytest.approx(sigma * norm.ppf(first), rel=1e-9)


def test_train_reference_step_adds_sigma_noise_in_train_mode(train_bench, monkeypatch):
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            seen.append((x.detach().clone(), self.training))
            return self.lin(x.flatten(1))

    monkeypatch.setattr(train_bench, "build_model_for", lambda arch, dataset: Probe())
    monkeypatch.setattr(torch, "randn_like", lambda x, **k: torch.ones_like(x))   # noise = sigma exactly
    step = train_bench.reference_step_factory(train_bench.synthetic_split(8), "x", 4, 0.25, torch.device("cpu"), 0)
    step()
    x, training = seen[0]
    assert training and x.shape == (4, 3, 32, 32)
    assert x.min().item() == pytest.approx(0.25) and x.max().item() <= 1.25 + 1e-6   # pixels in [0, 1] + sigma


def test_reference_pgd_reads_the_loss_every_step_only_with_host_sync(attack_bench):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).train()
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    d0 = torch.zeros_like(x)
    adv, losses = attack_bench.reference_pgd(model, x, y, eps=0.1, alpha=0.05, steps=3, delta0=d0, host_sync=True)
    assert len(losses) == 3 and not model.training
    assert losses[0] == pytest.approx(nn.functional.cross_entropy(model(x), y, reduction="sum").item())
    adv2, none = attack_bench.reference_pgd(model, x, y, eps=0.1, alpha=0.05, steps=3, delta0=d0)
    assert none == [] and torch.equal(adv, adv2) and (adv - x).abs().max() <= 0.1 + 1e-6


def test_sequential_main_summary_full_defaults_and_provenance(seq_bench, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(seq_bench, "linear_section", lambda args: seen.update(linear=args.linear, smooth=args.linear_smooth)
                        or {"simulated": {"compare": {"tag": "sim"}}, "smooth": {"compare": {"tag": "smooth"}}})
    monkeypatch.setattr(seq_bench, "digits_section", lambda args: seen.update(digits=args.digits)
                        or {"compare": {"tag": "digits"}})
    monkeypatch.setattr(seq_bench, "cifar_section", lambda args: {"compare": {"tag": "cifar"}})
    monkeypatch.setattr(seq_bench, "predict_section", lambda args: {"sample_ratio": 5.0, "wall_ratio": 4.0,
                                                                    "same_prediction": 2, "images": 3})
    out = tmp_path / "s.json"
    assert seq_bench.main(["--sections", "linear,digits,predict,cifar10", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["summary"] == {"linear_simulated": {"tag": "sim"}, "linear_smooth": {"tag": "smooth"},
                                 "digits": {"tag": "digits"}, "cifar10": {"tag": "cifar"},
                                 "predict_digits": {"sample_ratio": 5.0, "wall_ratio": 4.0, "same_prediction": 2}}
    assert seen == {"linear": 2000, "smooth": 50, "digits": 60}
    assert "git_dirty" in report["provenance"] and "command" in report["provenance"]


def test_sequential_json_is_written_after_each_section(seq_bench, monkeypatch, tmp_path):
    """A run cut off in a later section keeps the earlier ones, marked incomplete."""
    out = tmp_path / "s.json"
    monkeypatch.setattr(seq_bench, "digits_section", lambda args: {"compare": {"tag": "digits"}})

    def cut(args):
        report = json.loads(out.read_text())
        assert report["complete"] is False and report["summary"] == {"digits": {"tag": "digits"}}
        raise KeyboardInterrupt

    monkeypatch.setattr(seq_bench, "cifar_section", cut)
    with pytest.raises(KeyboardInterrupt):
        seq_bench.main(["--sections", "digits,cifar10", "--out", str(out)])
    assert list(json.loads(out.read_text())["results"]) == ["digits"]
    monkeypatch.setattr(seq_bench, "cifar_section", lambda args: {"compare": {"tag": "cifar"}})
    assert seq_bench.main(["--sections", "digits,cifar10", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["complete"] is True


# ----------------------------------------------------------------------------- the reproducibility audit
def test_sequential_linear_section_runs_for_real_inside_the_pixel_cube(seq_bench, tmp_path):
    """The section no other test runs end to end: its Margin images must lie in [0, 1] (Smooth
    refuses others), up to a margin of 6 sigma, and the smoothed probability is the half-space's."""
    from scipy.stats import norm

    margin = 0.25 * norm.ppf(np.array([0.3, 0.5, 0.9, 1 - 1e-9]))
    xs = seq_bench.margin_images(margin)
    assert 0 <= xs.min() and xs.max() <= 1
    assert torch.allclose(seq_bench.Margin()(xs)[:, 1], torch.as_tensor(margin))
    out = tmp_path / "lin.json"
    assert seq_bench.main(["--sections", "linear", "--linear", "20", "--linear-smooth", "3", "--n", "2000",
                           "--n0", "50", "--batch", "1000", "--images-per-batch", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and report["summary"]["linear_smooth"]


def test_sequential_refuses_an_unknown_section_and_a_foreign_out_before_any_work(seq_bench, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(seq_bench, "linear_section", lambda args: ran.append(1) or {})
    with pytest.raises(SystemExit):
        seq_bench.main(["--sections", "linear,predcit"])
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(SystemExit):
        seq_bench.main(["--sections", "linear", "--out", str(notes)])
    assert ran == [] and notes.read_text() == "mine"


def test_sequential_report_is_incomplete_when_a_section_was_skipped(seq_bench, tmp_path, monkeypatch):
    monkeypatch.setattr(seq_bench, "cifar_section", lambda args: {"skipped": "no CUDA GPU"})
    out = tmp_path / "s.json"
    assert seq_bench.main(["--sections", "cifar10", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["complete"] is False


def test_attack_quick_changes_defaults_only_and_keeps_pgd_when_autoattack_fails(attack_bench, monkeypatch, tmp_path):
    seen = {}
    _fake_pgd_bench(attack_bench, monkeypatch, seen)

    def no_autoattack(model, x, **k):
        raise ImportError("pyautoattack not installed")
    monkeypatch.setattr(attack_bench, "bench_autoattack", no_autoattack)
    out = tmp_path / "a.json"
    monkeypatch.setattr("sys.argv", ["bench_attack.py", "--quick", "--repeats", "2", "--batch", "8", "--out", str(out)])
    with pytest.raises(ImportError):
        attack_bench.main()
    assert seen["pgd"][0] == 8 and seen["pgd"][1]["repeats"] == 2   # given flags win over --quick's
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["pgd"]["speedup_ours_over_reference"] == 1.0
    assert report["config"]["device"] == "cpu" and report["config"]["aa_images"] == 4  # --quick's defaults


def test_train_refuses_an_unknown_method_before_building_anything(train_bench, monkeypatch):
    monkeypatch.setattr(train_bench, "_bench", lambda *a: pytest.fail("nothing may be built"))
    with pytest.raises(SystemExit):
        train_bench.main(["--quick", "--methods", "maxupp"])


def test_a_process_records_the_tree_it_was_imported_from_not_the_files_it_writes_later(monkeypatch):
    """A benchmark rewriting its tracked results file after each section recorded itself as made
    from a dirty tree from the second write on."""
    from robustmaxup.runtime import records

    written = []  # what `git status` says: the tree as imported, then with the results file written
    monkeypatch.setattr(records, "_git", lambda *args: "abc\n" if args[0] == "rev-parse" else "".join(written))
    records._tree_state.cache_clear()
    try:
        first = records.provenance()
        written.append(" M experiments/results/x.json\n")
        later = records.provenance()
    finally:
        records._tree_state.cache_clear()
    assert (first["git_sha"], first["git_dirty"]) == (later["git_sha"], later["git_dirty"]) == ("abc", False)
