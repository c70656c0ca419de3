"""Details of the experiment scripts behind the first CIFAR-10 certified table that the broader
tests (test_reproduce.py, test_experiment_scripts.py, test_precision_agreement.py) leave open.

reproduce.py: the presets' certify settings and the method -> recipe map, the epoch scaling of
step lengths, milestones and warm-ups, the equal-budget arithmetic (rounding, the over-budget
flag, a reference without a Gaussian column, ``--epochs`` as the budget), the measured-cost cache,
the commands (last.pt, the device, the analyze radii), ``--fresh`` refusals (symlink, a file,
anything it did not write), and every field of a results file (header lines, JSON settings,
provenance with the device, sidecars, epochs after ``--train-flags``).
check_precision.py: the comparison statistics on hand-made certificates, each run's summary,
the goals (>= 99% equal predictions, no packed fp32 change, bf16 autocast), the runs' plan and
the defaults and overrides main passes on.
demo.py: the commands it runs and that an empty directory is reused.
Every expected number is worked out by hand."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import norm

from robustmaxup.certify.smooth import Certificate
from robustmaxup.certify.tsv import read_certify
from robustmaxup.errors import UserError
from robustmaxup.train.checkpointing import read_metrics
from experiment_scripts import EXPERIMENTS, load_experiment, script_fixture  # noqa: E402

rep = script_fixture("reproduce")
chk = script_fixture("check_precision")


def _args(rep, *argv: str):
    return rep.build_parser().parse_args(["--device", "cpu", *argv])


# ---------------------------------------------------------------------------------------------
# reproduce.py: presets, the method map, certify flags
# ---------------------------------------------------------------------------------------------

def test_method_runs_map_each_column_to_its_recipe(rep):
    assert rep.METHOD_RUNS == {
        "gaussian": ("cohen", []), "maxup m=4": ("maxup", []), "maxup m=8": ("maxup", ["--copies", "8"]),
        "smoothadv": ("smoothadv", []), "smoothmix": ("smoothmix", []),
        "consistency": ("consistency", []), "macer": ("macer", [])}


def test_plan_train_commands_carry_the_column_flags_and_sigma(rep):
    rows = rep.plan(rep.PRESETS["cifar10"], ["maxup m=8", "gaussian", "smoothmix"], _args(rep, "--sigma", "0.5"),
                    ["--data-root", "D"])
    assert rows["maxup m=8"]["train"] == ["train", "--recipe", "maxup", "--dataset", "cifar10", "--data-root", "D",
                                          "--copies", "8", "--sigma", "0.5"]
    assert rows["gaussian"]["train"] == ["train", "--recipe", "cohen", "--dataset", "cifar10", "--data-root", "D",
                                         "--sigma", "0.5"]
    assert rows["smoothmix"]["train"] == ["train", "--recipe", "smoothmix_s0.5", "--dataset", "cifar10",
                                          "--data-root", "D"]


def test_presets_certify_settings(rep):
    c10, digits = rep.PRESETS["cifar10"], rep.PRESETS["digits"]
    assert c10["certify"] == ["--dataset", "cifar10", "--alpha", "0.001", "--batch", "1000", "--skip", "20"]
    assert (c10["n0"], c10["n"], c10["radii"]) == (100, 100_000, ["0", "0.25", "0.5", "0.75", "1.0"])
    assert digits["certify"] == ["--dataset", "digits", "--alpha", "0.001", "--batch", "1000", "--skip", "3"]
    assert (digits["n0"], digits["n"]) == (100, 1000)
    assert digits["radii"] == ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.75"]


def test_certify_flags_fixed_and_sequential_with_overrides(rep):
    preset = rep.PRESETS["digits"]
    base = ["--dataset", "digits", "--alpha", "0.001", "--batch", "1000", "--skip", "3"]
    assert rep.certify_flags(preset, _args(rep)) == [*base, "--n0", "100", "--n", "1000"]
    assert rep.certify_flags(preset, _args(rep, "--n0", "7", "--n", "50", "--max-images", "9")) == \
        [*base, "--n0", "7", "--n", "50", "--max", "9"]
    assert rep.certify_flags(preset, _args(rep, "--sequential", "--n0", "7")) == \
        [*base, "--n0", "7", "--sequential", "--n-max", "1000", "--radii", *preset["radii"]]


# ---------------------------------------------------------------------------------------------
# reproduce.py: epoch scaling and budgets
# ---------------------------------------------------------------------------------------------

def test_scaled_flags_round_the_step_length_and_warmup(rep):
    # SmoothAdv: 150 epochs, lr step 50, warm-up 10; at 50 epochs: 50/3 = 16.67 -> 17, 10/3 -> 3
    cfg = rep._config(["--recipe", "smoothadv", "--dataset", "cifar10", "--out", "u"])
    assert rep.scaled_flags(cfg, 50) == ["--epochs", "50", "--lr-step", "17", "--warmup", "3"]


def test_scaled_flags_keep_milestones_and_warmups_at_least_one(rep):
    # SmoothMix at 1 epoch: milestones 51/150 -> 0 and 101/150 -> 1, both at least 1; warm-up 10/150 -> 1
    cfg = rep._config(["--recipe", "smoothmix", "--dataset", "cifar10", "--out", "u"])
    assert rep.scaled_flags(cfg, 1) == ["--epochs", "1", "--lr-milestones", "1", "--warmup", "1"]


def test_scaled_flags_scale_the_weight_perturbation_warmup(rep):
    # AWP-TRADES: 200 epochs, milestones 99, 149, awp warm-up 9; x 20/200: 9.9 -> 10, 14.9 -> 15, 0.9 -> 1
    cfg = rep._config(["--recipe", "awp_trades", "--dataset", "cifar10", "--out", "u"])
    assert rep.scaled_flags(cfg, 20) == ["--epochs", "20", "--lr-milestones", "10", "15", "--awp-warmup", "1"]


def test_scaled_flags_scale_a_method_default_warmup(rep):
    # no recipe: SmoothAdv's own default warm-up (10 epochs) is scaled too, 100 -> 50 epochs: 5
    cfg = rep._config(["--method", "smoothadv", "--dataset", "cifar10", "--epochs", "100", "--out", "u"])
    flags = rep.scaled_flags(cfg, 50)
    assert flags[flags.index("--warmup") + 1] == "5"


def test_plan_with_epochs_gives_every_method_those_epochs(rep):
    rows = rep.plan(rep.PRESETS["cifar10"], ["gaussian", "smoothadv"], _args(rep, "--epochs", "45"), [])
    assert rows["gaussian"]["epochs"] == rows["smoothadv"]["epochs"] == 45
    assert rows["gaussian"]["flags"] == ["--epochs", "45", "--lr-step", "15"]          # 30 x 1/2
    assert rows["smoothadv"]["flags"] == ["--epochs", "45", "--lr-step", "15", "--warmup", "3"]  # x 0.3


def test_budget_arithmetic_and_the_over_budget_flag(rep):
    # Gaussian 3 forward passes per example, SmoothMix 36: relative 12. --epochs is Gaussian's.
    args = _args(rep, "--budget", "--epochs", "10")
    rows = rep.plan(rep.PRESETS["cifar10"], ["gaussian", "maxup m=4", "smoothmix"], args, [])
    sm = rows["smoothmix"]
    assert sm["relative_cost"] == pytest.approx(12) and sm["budget_epochs"] == pytest.approx(10 / 12)
    assert sm["epochs"] == 1 and sm["over_budget"] is False       # 0.83 rounds to 1: within budget
    assert rows["maxup m=4"]["epochs"] == 4                         # 10 x 3/7 = 4.29
    assert rows["gaussian"]["epochs"] == 10 and rows["gaussian"]["budget_epochs"] == pytest.approx(10)
    rows = rep.plan(rep.PRESETS["cifar10"], ["smoothmix"], _args(rep, "--budget", "--epochs", "5"), [])
    assert rows["smoothmix"]["epochs"] == 1 and rows["smoothmix"]["over_budget"] is True   # 5/12 < 0.5
    note = rep._budget_note(rows, "estimated", 5)
    assert note.startswith("# equal-compute budget: 5 Gaussian epochs") and "OVER budget" in note


def test_budget_without_a_gaussian_column_uses_the_cohen_reference(rep):
    rows = rep.plan(rep.PRESETS["cifar10"], ["maxup m=4"], _args(rep, "--budget"), [])
    assert rows["maxup m=4"]["relative_cost"] == pytest.approx(7 / 3) and rows["maxup m=4"]["epochs"] == 39


def test_budget_note_states_the_gaussian_epochs_of_epochs(rep, capsys):
    assert rep.main(["--preset", "cifar10", "--methods", "gaussian", "maxup m=4", "--budget", "--epochs", "30",
                     "--device", "cpu", "--out", "runs/never", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# equal-compute budget: 30 Gaussian epochs" in out
    assert "maxup m=4: 2.33x Gaussian -> 13 epochs (recipe maxup: 90)" in out    # 30 x 3/7 = 12.86


def test_train_flags_come_last_and_the_plan_reports_their_epochs(rep):
    args = _args(rep, "--epochs", "45")
    args.train_flags = ["--epochs", "3"]
    row = rep.plan(rep.PRESETS["cifar10"], ["gaussian"], args, [])["gaussian"]
    assert row["train"][-2:] == ["--epochs", "3"] and row["epochs"] == 3


def test_measure_cost_needs_budget(rep):
    with pytest.raises(SystemExit) as e:
        rep.main(["--measure-cost", "2", "--dry-run"])
    assert e.value.code == 2


def test_measured_cost_cache_is_keyed_by_argv_steps_and_device(rep, monkeypatch):
    calls = []
    monkeypatch.setattr(rep, "measured_cost", lambda argv, steps: calls.append((argv, steps)) or 0.5)
    argv = ["--recipe", "cohen"]
    cache = {"gaussian": {"argv": argv, "steps": 3, "device": "cpu", "seconds_per_example": 2.0}}
    args = SimpleNamespace(measure_cost=3, device="cpu")
    assert rep._measured("gaussian", argv, args, cache) == 2.0 and calls == []
    assert rep._measured("gaussian", argv, SimpleNamespace(measure_cost=4, device="cpu"), cache) == 0.5
    assert calls == [([*argv, "--device", "cpu"], 4)]
    assert cache["gaussian"] == {"argv": argv, "steps": 4, "device": "cpu", "seconds_per_example": 0.5}
    assert rep._measured("gaussian", ["--recipe", "maxup"], args, cache) == 0.5 and len(calls) == 2


def test_fresh_does_not_reuse_the_measured_cost_cache(rep, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(rep, "measured_cost", lambda argv, steps: {"cohen": 1.0, "maxup": 2.0}[argv[1]])
    out = tmp_path / "out"
    out.mkdir()
    stale = {label: {"argv": ["--recipe", r, *rep.DIGITS_DERIVATION], "steps": 2, "device": "cpu",
                     "seconds_per_example": 1.0} for label, r in (("gaussian", "cohen"), ("maxup m=4", "maxup"))}
    (out / rep.COST_CACHE).write_text(json.dumps(stale))
    argv = ["--methods", "gaussian", "maxup m=4", "--budget", "--measure-cost", "2", "--device", "cpu",
            "--out", str(out), "--dry-run"]
    assert rep.main(argv) == 0
    assert "maxup m=4: 1.00x Gaussian -> 12 epochs" in capsys.readouterr().out      # the cache's
    assert rep.main([*argv, "--fresh"]) == 0
    assert "maxup m=4: 2.00x Gaussian -> 6 epochs" in capsys.readouterr().out       # measured: 12 / 2


def test_measured_cost_times_steps_after_one_untimed(rep, monkeypatch):
    steps = []
    clock = iter([10.0, 16.0])
    monkeypatch.setattr(rep, "train_batch", lambda run, x, y: steps.append(len(x)))
    monkeypatch.setattr(rep, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    cost = rep.measured_cost(["--recipe", "cohen", *rep.DIGITS_DERIVATION, "--device", "cpu"], 3)
    assert steps == [64, 64, 64, 64]              # one untimed + 3 timed batches of 64
    assert cost == pytest.approx(6.0 / (3 * 64))  # 6 s over 192 examples


# ---------------------------------------------------------------------------------------------
# reproduce.py: commands, --fresh, notes
# ---------------------------------------------------------------------------------------------

def test_dry_run_certifies_last_pt_on_the_device_and_analyzes_every_radius(rep, capsys):
    assert rep.main(["--methods", "gaussian", "--device", "cuda:1", "--out", "runs/x", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    certify = [line for line in lines if line.startswith("robustmaxup certify")][0]
    assert certify.startswith(f"robustmaxup certify {Path('runs/x/gaussian/last.pt')} ")
    assert "--device cuda:1 --out" in certify
    assert lines[-1].startswith("robustmaxup analyze runs/x/gaussian.tsv --radii 0 0.1 0.2 0.3 0.4 0.5 0.6 0.75 "
                                "--plot")


def test_foreign_entries_name_everything_the_script_did_not_write(rep, tmp_path):
    out, other = tmp_path / "out", tmp_path / "other"
    out.mkdir()
    other.mkdir()
    for name in ("gaussian", "maxup_m4"):
        (out / name).mkdir()
    for name in ("gaussian.tsv", "gaussian.tsv.json", "table.md", "measured_cost.json", ".table.md.x1.tmp"):
        (out / name).write_text("")
    assert rep._foreign_entries(out) == []
    (out / "certified_accuracy.png").mkdir()           # a directory under a file's name
    (out / "gaussian_notes.txt").write_text("")        # starts like a run, not like its TSV
    (out / ".git").mkdir()                             # hidden, not a temporary file
    (out / "macer").symlink_to(other)                  # a link under a run's name
    assert rep._foreign_entries(out) == [".git", "certified_accuracy.png", "gaussian_notes.txt", "macer"]


def test_fresh_refuses_a_symlink_and_a_file(rep, tmp_path, capsys):
    target = tmp_path / "target"
    target.mkdir()
    (target / "table.md").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (link, afile):
        assert rep.main(["--methods", "gaussian", "--device", "cpu", "--out", str(out), "--fresh"]) == 2
        assert "is not a directory; not deleting it" in capsys.readouterr().err
    assert (target / "table.md").read_text() == "keep" and afile.read_text() == "keep" and link.is_symlink()


def test_recorded_times_and_mean_samples_from_hand_written_records(rep, tmp_path):
    tsv = tmp_path / "g.tsv"
    tsv.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\tn_used\n"
                   "0\t1\t1\t0.5\t1\t0:00:01.500\t100\n3\t2\t-1\t0.0\t0\t0:00:00.250\t100\n"
                   "6\t0\t0\t0.1\t1\t0:01:00.000\t1000\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(
        '{"epoch": 1, "epoch_seconds": 2.5}\n{"epoch": 2, "epoch_seconds": 4.0}\nnot json\n')
    assert rep.mean_samples(tsv) == 400.0                      # (100 + 100 + 1000) / 3, not the median
    assert rep.recorded_times(tmp_path / "run", tsv) == {"train_s": 6.5, "certify_s": 61.75,
                                                         "epochs_recorded": 2, "images_recorded": 3}
    assert rep.recorded_times(tmp_path / "none", tmp_path / "none.tsv") == {
        "train_s": 0, "certify_s": 0, "epochs_recorded": 0, "images_recorded": 0}


def test_radius_cap_note_at_fixed_n(rep):
    # sigma * Phi^-1(alpha^(1/n)): the radius of n unanimous votes
    cap = 0.5 * norm.ppf(0.001 ** (1 / 100))
    assert rep._radius_cap_note(100, 0.001, 0.5, False) == \
        f"largest certifiable radius at n = 100, alpha = 0.001: {cap:.4f}"


def test_certify_and_time_notes(rep):
    fixed = {"mode": "fixed n", "n": 100, "n0": 20, "alpha": 0.001, "skip": 3, "max_images": 4}
    assert rep._certify_note(fixed) == "certification: fixed n = 100 (n0 = 20), alpha = 0.001, skip 3, max 4 images"
    assert rep._certify_note({**fixed, "max_images": None}).endswith("alpha = 0.001, skip 3")
    note = rep._time_note({"g": {"train_s": 12.34, "certify_s": 5.0, "epochs_recorded": 2, "images_recorded": 4,
                                 "this_call_s": {"train": 1.25, "certify": 0.5}}})
    assert "g train 12.3 s (2 epochs), certify 5.0 s (4 images)\n# this call: g train 1.2 s, certify 0.5 s\n" in note


# ---------------------------------------------------------------------------------------------
# reproduce.py: a results file (digits, one epoch, 4 images at n = 100)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def results(rep, tmp_path_factory):
    d = tmp_path_factory.mktemp("details")
    out = d / "out"
    argv = ["--preset", "digits", "--methods", "gaussian", "--sigma", "0.5", "--epochs", "2",
            "--train-flags=--max-train 128 --max-eval 20 --epochs 1", "--n", "100", "--n0", "20",
            "--max-images", "4", "--device", "cpu", "--out", str(out), "--results", str(d / "res")]
    assert rep.main(argv) == 0
    return SimpleNamespace(out=out, md=Path(f"{d / 'res'}.md").read_text(),
                           json=json.loads(Path(f"{d / 'res'}.json").read_text()))


def test_results_json_settings(results):
    r = results.json
    assert (r["preset"], r["sigma"], r["budget"]) == ("digits", "0.5", False)
    assert r["train_flags"] == ["--max-train", "128", "--max-eval", "20", "--epochs", "1"]
    assert r["plan"]["gaussian"]["epochs"] == 1 and len(read_metrics(results.out / "gaussian")) == 1
    assert r["certification"] == {"mode": "fixed n", "n0": 20, "alpha": 0.001, "skip": 3, "max_images": 4, "n": 100}
    assert r["commands"]["gaussian"]["train"][-5:] == ["--device", "cpu", "--out", str(results.out / "gaussian"),
                                                       "--resume"]
    assert r["sidecars"]["gaussian"]["n"] == 100 and r["sidecars"]["gaussian"]["sigma"] == 0.5


def test_results_json_times_and_provenance(results):
    r, out = results.json, results.out
    rows = read_certify(out / "gaussian.tsv")[0]
    t = r["timings_s"]["gaussian"]
    assert t["certify_s"] == round(sum(row.time for row in rows), 3) and t["images_recorded"] == 4
    assert t["train_s"] == round(read_metrics(out / "gaussian")[0]["epoch_seconds"], 3)
    assert r["this_call_total_s"] >= t["this_call_s"]["train"] + t["this_call_s"]["certify"] - 0.002
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=EXPERIMENTS, capture_output=True, text=True)
    assert r["provenance"]["git_sha"] == (head.stdout.strip() or os.environ.get("ROBUSTMAXUP_GIT_SHA"))
    assert "git_dirty" in r["provenance"] and r["provenance"]["device"]
    sessions = r["training_sessions"]
    assert list(sessions) == ["gaussian"] and len(sessions["gaussian"]) == 1
    assert sessions["gaussian"][0]["from_epoch"] == 0 and sessions["gaussian"][0]["epochs"] == 1
    assert sessions["gaussian"][0] == json.loads((out / "gaussian" / "config.json").read_text())["sessions"][0]


def test_git_note_names_the_state_of_the_tree(rep):
    assert rep.git_note({"git_sha": "abc", "git_dirty": False}) == "git abc (clean)"
    assert rep.git_note({"git_sha": "abc", "git_dirty": True}) == "git abc (dirty tree)"
    assert rep.git_note({}) == "git unknown (state unknown)"


def test_sessions_note_gives_each_calls_epochs_commit_and_device(rep):
    h100 = {"git_sha": "a1", "git_dirty": False, "device": "NVIDIA H100"}
    h200 = {"git_sha": "b2", "git_dirty": True, "device": "NVIDIA H200"}
    note = rep.sessions_note({"gaussian": [{"from_epoch": 0, "provenance": h100},
                                           {"from_epoch": 45, "provenance": h200}],
                              "maxup m=4": [{"from_epoch": 0, "provenance": h100}],
                              "macer": []},
                             {"gaussian": 90, "maxup m=4": 60, "macer": 3})
    assert note == ("# training: gaussian in 2 calls (epochs 1-45: git a1 (clean), NVIDIA H100; "
                    "epochs 46-90: git b2 (dirty tree), NVIDIA H200); "
                    "maxup m=4 in 1 call (epochs 1-60: git a1 (clean), NVIDIA H100); "
                    "macer: no sessions recorded\n")


def test_training_sessions_reads_config_json_and_tolerates_its_absence(rep, tmp_path):
    assert rep.training_sessions(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    assert rep.training_sessions(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps({"sessions": [{"from_epoch": 0}]}))
    assert rep.training_sessions(tmp_path) == [{"from_epoch": 0}]


def test_results_md_header(results):
    r = results.json
    lines = results.md.splitlines()
    assert lines[0] == ("# digits, σ = 0.5, each method's recipe (digits derivation: "
                        "--dataset digits --arch digits_cnn --epochs 12 --batch 64 --schedule step --lr-step 8); "
                        "epochs: gaussian 1; extra training flags: --max-train 128 --max-eval 20 --epochs 1")
    assert lines[1] == "# certification: fixed n = 100 (n0 = 20), alpha = 0.001, skip 3, max 4 images"
    prov = r["provenance"]
    state = "dirty tree" if prov["git_dirty"] else "clean"
    assert lines[2] == f"# git {prov['git_sha']} ({state}), {prov['device']}, torch {torch.__version__}"
    trained = r["training_sessions"]["gaussian"][0]["provenance"]
    assert lines[3] == (f"# training: gaussian in 1 call (epochs 1-1: git {trained['git_sha']} ({state}), "
                        f"{trained['device']})")
    cap = 0.5 * norm.ppf(0.001 ** (1 / 100))    # at σ = 0.5, not the recipes' 0.25
    assert lines[4] == f"# largest certifiable radius at n = 100, alpha = 0.001: {cap:.4f}"
    assert lines[5].startswith("# wall time from the records") and lines[6].startswith("# this call:")
    assert results.md.endswith((results.out / "table.md").read_text())


# ---------------------------------------------------------------------------------------------
# check_precision.py
# ---------------------------------------------------------------------------------------------

def _cert(prediction, radius, counts, p_lower=0.5):
    return Certificate(prediction, radius, p_lower, tuple(counts))


#: six images, 10 votes each: same, identical, abstain -> certify, certify -> abstain, class
#: change, both abstain
A = [_cert(1, 0.50, (0, 10, 0, 0)), _cert(2, 0.30, (0, 1, 9, 0)), _cert(-1, 0.0, (5, 5, 0, 0)),
     _cert(0, 0.20, (8, 2, 0, 0)), _cert(3, 0.40, (0, 0, 1, 9)), _cert(-1, 0.0, (5, 5, 0, 0))]
B = [_cert(1, 0.56, (1, 9, 0, 0)), _cert(2, 0.30, (0, 1, 9, 0)), _cert(0, 0.05, (6, 4, 0, 0)),
     _cert(-1, 0.0, (5, 5, 0, 0)), _cert(2, 0.10, (0, 0, 7, 3)), _cert(-1, 0.0, (4, 6, 0, 0))]


def test_compare_statistics_by_hand(chk):
    c = chk.compare(A, B, 10)
    # equal predictions: images 0, 1, 5; both certify the same class: 0, 1 (|dR| 0.06 and 0)
    assert c["images"] == 6 and c["prediction_agreement"] == 0.5 and c["prediction_changes"] == 3
    assert c["certify_changes"] == 2 and c["class_changes"] == 1
    assert c["certify_changes_max_radius"] == pytest.approx(0.20)     # max(0.05, 0.20)
    assert c["both_certified_same_class"] == 2
    assert c["radius_abs_diff_max"] == pytest.approx(0.06) and c["radius_abs_diff_mean"] == pytest.approx(0.03)
    assert c["identical_certificates"] == 1
    # vote flips (half the L1 distance): 1, 0, 1, 3, 6, 1
    assert c["vote_flips"] == 12 and c["images_with_different_votes"] == 5 and c["vote_flips_max_per_image"] == 6
    assert c["vote_flip_rate"] == pytest.approx(12 / 60)


def test_compare_without_switches_or_common_certificates(chk):
    c = chk.compare(A[2:3], A[2:3], 10)
    assert c["prediction_agreement"] == 1.0 and c["certify_changes_max_radius"] is None
    assert c["radius_abs_diff_max"] is None and c["radius_abs_diff_mean"] is None


def test_certify_mode_summary(chk, monkeypatch):
    preds, labels, radii = [1, -1, 2, 0], [1, 0, 1, 0], [0.4, 0.0, 0.2, 0.6]

    def fake(smooth, split, indices, **kw):
        smooth.certs.extend(_cert(p, r, (1, 1)) for p, r in zip(preds, radii))
        return [SimpleNamespace(idx=i, label=lab, predict=p, radius=r, correct=int(p == lab), time=0.0)
                for i, lab, p, r in zip(indices, labels, preds, radii)]

    monkeypatch.setattr(chk, "certify_dataset", fake)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    s = {"n0": 1, "n": 2, "alpha": 0.001, "batch": 2, "seed": 0}
    out = chk.certify_mode(model, 10, 0.25, None, [0, 1, 2, 3], precision="fp32", pack=3, s=s)
    m = out["summary"]
    assert (m["abstained"], m["certified_accuracy"], m["images_per_batch"]) == (1, 0.5, 3)
    assert m["mean_radius_certified"] == pytest.approx(0.4)     # (0.4 + 0.2 + 0.6) / 3, abstention left out


def _fake_runs(chk, monkeypatch, certs_for, autocast=None, correct=1):
    """run_check over fake certify_mode runs: ``certs_for(name_index, precision, pack, seed)``."""
    calls = []

    def fake(model, num_classes, sigma, split, indices, *, precision, pack, s):
        calls.append((precision, pack, s["seed"]))
        certs = certs_for(len(calls) - 1, precision, pack, s["seed"])
        ac = (autocast or {}).get(len(calls) - 1, "torch.bfloat16" if precision == "bf16" else "None")
        rows = [SimpleNamespace(idx=i, label=0) for i in indices]
        return {"certs": certs, "rows": rows, "summary": {
            "autocast": ac, "s_per_image": 0.0, "abstained": 0, "certified_accuracy": correct}}

    monkeypatch.setattr(chk, "certify_mode", fake)
    return calls


def _same(k, changed=0):
    return [_cert(0 if i >= changed else 1, 0.5, (10, 0)) for i in range(k)]


def test_run_check_passes_at_exactly_99_percent(chk, monkeypatch):
    calls = _fake_runs(chk, monkeypatch, lambda j, prec, pack, seed: _same(100, 1 if (prec, pack) == ("bf16", 1) else 0))
    report = chk.run_check(None, 10, 0.25, None, range(100), pack=4, seed=7, seed_baseline=True)
    assert calls == [("fp32", 1, 7), ("bf16", 1, 7), ("fp32", 4, 7), ("bf16", 4, 7), ("fp32", 1, 8)]
    assert report["comparisons"]["bf16_vs_fp32"]["prediction_agreement"] == 0.99
    assert set(report["comparisons"]) == {"bf16_vs_fp32", "fp32_packed_vs_fp32", "bf16_packed_vs_bf16",
                                          "fp32_seed+1_vs_fp32"}
    assert report["passed"] and report["failures"] == []
    report = chk.run_check(None, 10, 0.25, None, range(100), min_agreement=0.995)
    assert not report["passed"] and report["failures"][0].startswith("bf16 and fp32 predictions agree on 0.9900")


def test_run_check_fails_on_a_packed_fp32_change_and_a_missing_autocast(chk, monkeypatch):
    _fake_runs(chk, monkeypatch, lambda j, prec, pack, seed: _same(10, 1 if (prec, pack) == ("fp32", 4) else 0))
    report = chk.run_check(None, 10, 0.25, None, range(10))
    assert report["failures"] == ["packing 4 images per batch changes 1 fp32 predictions (goal 0)"]
    _fake_runs(chk, monkeypatch, lambda *a: _same(10), autocast={3: "None"})
    report = chk.run_check(None, 10, 0.25, None, range(10))
    assert report["failures"] == ["the bf16 runs did not run under bf16 autocast: nothing was compared"]
    with pytest.raises(UserError, match="--pack must be >= 2"):
        chk.run_check(None, 10, 0.25, None, range(10), pack=1)


def test_run_check_warns_when_the_model_certifies_little(chk, monkeypatch, caplog):
    _fake_runs(chk, monkeypatch, lambda *a: _same(10), correct=0.1)   # < 2 / 10 classes
    with caplog.at_level("WARNING", logger="check_precision"):
        chk.run_check(None, 10, 0.25, None, range(10))
    assert any(r.levelname == "WARNING" and "looks untrained" in r.message for r in caplog.records)


def _main_capturing(chk, monkeypatch, failures=()):
    seen = {}

    def fake(model, num_classes, sigma, split, indices, **kw):
        seen.update(kw, sigma=sigma, indices=list(indices), num_classes=num_classes)
        return {"modes": {}, "comparisons": {"bf16_vs_fp32": chk.compare(A, A, 10)},
                "failures": list(failures), "passed": not failures}

    monkeypatch.setattr(chk, "run_check", fake)
    return seen


def test_check_precision_full_defaults_and_settings(chk, monkeypatch, tmp_path):
    seen = _main_capturing(chk, monkeypatch)
    out = tmp_path / "p.json"
    assert chk.main(["--random-init", "digits_cnn", "--dataset", "digits", "--device", "cpu", "--out", str(out)]) == 0
    # FULL: skip 20 over the 360 digits test images -> 0, 20, ..., 340 (18; --max 500 is more)
    assert seen["indices"] == list(range(0, 360, 20))
    assert (seen["n0"], seen["n"], seen["batch"], seen["alpha"], seen["min_agreement"]) == (100, 10_000, 1000, 0.001, 0.99)
    settings = json.loads(out.read_text())["settings"]
    assert settings["images"] == 18 and settings["n"] == 10_000 and settings["sigma"] == 0.25


def test_check_precision_quick_defaults_and_overrides(chk, monkeypatch):
    seen = _main_capturing(chk, monkeypatch)
    assert chk.main(["--quick", "--random-init", "digits_cnn", "--dataset", "digits", "--alpha", "0.01",
                     "--min-agreement", "0.9", "--sigma", "0.5"]) == 0
    assert len(seen["indices"]) == 60 and (seen["n0"], seen["n"], seen["batch"]) == (50, 500, 250)
    assert (seen["alpha"], seen["min_agreement"], seen["sigma"]) == (0.01, 0.9, 0.5)


def test_check_precision_sigma_override_of_a_checkpoint(chk, monkeypatch, digits_checkpoint):
    seen = _main_capturing(chk, monkeypatch)
    assert chk.main(["--checkpoint", digits_checkpoint, "--sigma", "0.5", "--device", "cpu", "--max", "3"]) == 0
    assert seen["sigma"] == 0.5 and seen["num_classes"] == 10


def test_check_precision_exits_1_on_a_failed_goal(chk, monkeypatch, capsys):
    _main_capturing(chk, monkeypatch, failures=["bad"])
    assert chk.main(["--random-init", "digits_cnn", "--dataset", "digits", "--device", "cpu", "--max", "3"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "FAIL: bad"


def test_no_tf32_turns_off_both_flags(chk, monkeypatch):
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    _main_capturing(chk, monkeypatch)
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        assert chk.main(["--random-init", "digits_cnn", "--dataset", "digits", "--device", "cpu", "--max", "3",
                         "--no-tf32"]) == 0
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def test_quick_trains_ten_gaussian_epochs(chk, monkeypatch, tmp_path):
    import robustmaxup.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", seen.append)
    assert chk._train_digits(str(tmp_path), 0.5, 3) == str(tmp_path / "last.pt")
    cfg = seen[0]
    assert (cfg.epochs, cfg.method, cfg.method_args, cfg.seed, cfg.device) == (10, "gaussian", {"sigma": 0.5}, 3, "cpu")


# ---------------------------------------------------------------------------------------------
# demo.py
# ---------------------------------------------------------------------------------------------

def _demo_steps(monkeypatch):
    demo, steps = load_experiment("demo"), []
    monkeypatch.setattr(demo, "cli", lambda argv: steps.append(argv) or 0)
    return demo, steps


def test_demo_commands(monkeypatch, tmp_path):
    demo, steps = _demo_steps(monkeypatch)
    out = tmp_path / "d"
    assert demo.main(["--out", str(out), "--sigma", "0.5", "--n", "300", "--skip", "7", "--device", "cpu"]) == 0
    train_maxup, certify_maxup, train_gauss, _, analyze = steps
    assert train_maxup[train_maxup.index("--method"):train_maxup.index("--method") + 4] == \
        ["--method", "maxup", "--copies", "4"]
    for train in (train_maxup, train_gauss):
        assert train[train.index("--sigma") + 1] == "0.5" and train[train.index("--lr-step") + 1] == "8"  # 12 x 2/3
    assert certify_maxup[:2] == ["certify", str(out / "maxup" / "last.pt")]
    assert certify_maxup[certify_maxup.index("--n0"):certify_maxup.index("--out")] == \
        ["--n0", "100", "--n", "300", "--alpha", "0.001", "--batch", "1000", "--skip", "7"]
    assert analyze[analyze.index("--radii") + 1:analyze.index("--plot")] == \
        ["0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.75"]


def test_demo_uses_an_empty_existing_directory(monkeypatch, tmp_path):
    demo, steps = _demo_steps(monkeypatch)
    out = tmp_path / "empty"
    out.mkdir()
    assert demo.main(["--out", str(out)]) == 0 and (out / demo.MARKER).exists() and len(steps) == 5


def test_math_of_the_hand_worked_cap():
    # alpha^(1/n) at n = 100, alpha = 0.001: exp(ln(0.001) / 100) = 0.93325; Phi^-1 of it ~ 1.50
    assert math.isclose(0.001 ** (1 / 100), 0.933254, rel_tol=1e-5)
    assert 1.49 < norm.ppf(0.001 ** (1 / 100)) < 1.51
