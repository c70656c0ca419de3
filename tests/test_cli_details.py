"""Details of the command-line layer (robustmaxup/cli) that the end-to-end tests leave open: the
subcommand registry and ``--``/``--version``, the one-line error format and which flag it names,
Cohen-compatible aliases and positional form, each attack/train/analyze/export flag's way to
the library (the library runner is replaced by a recorder where possible, so nothing heavy
runs). Expected values are worked out by hand from the documented behaviour."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
import torch

from robustmaxup.cli import SUBCOMMANDS, main
from robustmaxup.runtime.checks import FieldError


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _job(monkeypatch, argv):
    import robustmaxup.cli._smoothing as smoothing

    jobs = []
    monkeypatch.setattr(smoothing, "run_job", jobs.append)
    assert main(argv) == 0
    return jobs[0]


# ----------------------------------------------------------------------------- robustmaxup itself
def test_each_subcommand_dispatches_to_its_own_module(monkeypatch):
    assert list(SUBCOMMANDS) == ["train", "certify", "predict", "analyze", "attack", "export"]
    seen = []
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"robustmaxup.cli.{name}")
        monkeypatch.setattr(module, "main", lambda argv, name=name: seen.append((name, argv)) or 7)
    for name in SUBCOMMANDS:
        assert main([name, "x", "--y"]) == 7
    assert seen == [(name, ["x", "--y"]) for name in SUBCOMMANDS]


def test_a_leading_double_dash_is_dropped(monkeypatch):
    """``torchrun ... -m robustmaxup -- certify ...``."""
    job = _job(monkeypatch, ["--", "certify", "m.pt", "--dataset", "digits"])
    assert (job.command, job.checkpoint) == ("certify", "m.pt")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_the_version_and_exits_0(flag, capsys):
    from robustmaxup import __version__

    assert main([flag]) == 0
    assert capsys.readouterr().out == f"robustmaxup {__version__}\n"


def test_unknown_command_is_one_line_naming_the_choices(capsys):
    assert main(["certfy"]) == 2
    assert _one_line(capsys) == ("robustmaxup: error: unknown command 'certfy'; choose from train, "
                                 "certify, predict, analyze, attack, export; did you mean 'certify'?")


# ----------------------------------------------------------------------------- common
def test_usage_error_line_is_exact(capsys):
    assert main(["predict", "m.pt", "--dataset", "digits", "--sequential", "--radii", "0.5"]) == 2
    assert _one_line(capsys) == ("robustmaxup predict: error: unrecognized arguments: --radii 0.5 "
                                 "(see --help)")


def test_a_user_error_line_is_exact_and_stripped(capsys):
    from robustmaxup.cli.common import error_line
    from robustmaxup.errors import UserError

    assert error_line("attack", UserError("bad thing\n")) == "robustmaxup attack: error: bad thing"
    assert main(["attack", "m.pt", "--dataset", "digits", "--eps", "0.1", "--batch", "0"]) == 2
    assert _one_line(capsys) == "robustmaxup attack: error: --batch must be an integer >= 1, got 0"


def test_flag_for_maps_fields_to_flags():
    from robustmaxup.cli.common import flag_for

    assert flag_for("n_max") == "--n-max"
    assert flag_for("batch_size", {"batch_size": "--batch"}) == "--batch"
    assert flag_for("n_max", {"batch_size": "--batch"}) == "--n-max"


@pytest.mark.parametrize("field, flag", [("max_images", "--max"), ("indices", "--skip/--max"),
                                         ("batch_size", "--batch"), ("images_per_batch", "--images-per-batch")])
def test_certify_field_errors_name_the_flag(monkeypatch, capsys, field, flag):
    import robustmaxup.cli._smoothing as smoothing

    def fail(job):
        raise FieldError(field, "must be good")
    monkeypatch.setattr(smoothing, "run_job", fail)
    assert main(["certify", "m.pt", "--dataset", "digits"]) == 2
    assert _one_line(capsys) == f"robustmaxup certify: error: {flag} must be good"


def test_quiet_reaches_the_logging_set_up_before_the_body_runs():
    from robustmaxup.cli.args import add_runtime_args, make_parser
    from robustmaxup.cli.common import run

    levels = []
    p = make_parser("x", "")
    add_runtime_args(p)
    assert run("x", lambda args: levels.append(logging.getLogger().level), p, ["--quiet"]) == 0
    assert run("x", lambda args: levels.append(logging.getLogger().level), p, []) == 0
    assert levels == [logging.WARNING, logging.INFO]


# ----------------------------------------------------------------------------- certify / predict
def test_cohens_n0_and_n_spellings(monkeypatch):
    job = _job(monkeypatch, ["certify", "m.pt", "--dataset", "digits", "--N0", "7", "--N", "9"])
    assert (job.n0, job.n) == (7, 9)
    job = _job(monkeypatch, ["predict", "m.pt", "--dataset", "digits", "--N", "11"])
    assert (job.command, job.n0, job.n) == ("predict", None, 11)


@pytest.mark.parametrize("flag, want", [("--compile", (True, False)), ("--fold-bn", (False, True))])
def test_compile_and_fold_bn_are_separate_switches(monkeypatch, flag, want):
    job = _job(monkeypatch, ["predict", "m.pt", "--dataset", "digits", flag])
    assert (job.compile, job.fold_bn) == want


def test_n_zero_is_refused_not_taken_for_the_default(capsys):
    assert main(["certify", "m.pt", "--dataset", "digits", "--n", "0"]) == 2
    assert _one_line(capsys) == "robustmaxup certify: error: --n must be an integer >= 1, got 0"


def test_cohens_form_needs_four_plain_positionals_and_quotes_the_rest():
    from robustmaxup.cli._cohen import cohen_positional_error as cohen

    assert cohen("certify", ["digits", "m.pt", "0.25", "-v"]) is None
    assert cohen("predict", ["digits", "m.pt", "0.25", "o.tsv", "--class-order", "a b"]).endswith(
        "robustmaxup predict m.pt --dataset digits --sigma 0.25 --out o.tsv "
        "--class-order 'a b'")


def test_cohens_form_from_the_process_arguments(monkeypatch, capsys):
    """``main()`` with no argv reads ``sys.argv[2:]`` (``robustmaxup predict ...``)."""
    import sys

    from robustmaxup.cli.predict import main as predict_main

    monkeypatch.setattr(sys, "argv", ["robustmaxup", "predict", "digits", "m.pt", "0.25", "o.tsv"])
    assert predict_main() == 2
    assert "this is Cohen et al.'s positional form" in _one_line(capsys)


# ----------------------------------------------------------------------------- attack
def _attack_args(*extra):
    from robustmaxup.cli.attack import build_parser

    return build_parser().parse_args(["m.pt", "--dataset", "digits", "--eps", "0.5", *extra])


def test_attack_flags_reach_the_config():
    from robustmaxup.cli.attack import attack_config

    cfg = attack_config(_attack_args("--attack", "pgd", "--steps", "3", "--step-size", "1/4",
                                     "--batch", "2", "--rescores", "4"), 0.5, None)
    assert (cfg.attack, cfg.norm, cfg.version, cfg.attacks, cfg.steps, cfg.step_size, cfg.batch_size,
            cfg.rescores, cfg.sigma) == ("pgd", "Linf", "standard", None, 3, 0.25, 2, 4, None)
    cfg = attack_config(_attack_args("--smoothed", "--attacks", "apgd-ce", "square"), 0.5, 0.25)
    assert (cfg.version, cfg.attacks, cfg.steps) == ("custom", ("apgd-ce", "square"), 10)


@pytest.mark.parametrize("extra, needle", [
    (["--attack", "pgd", "--attacks", "apgd-ce"], "--aa-version/--attacks apply to --attack autoattack"),
    (["--steps", "5"], "--steps/--step-size apply to --attack pgd"),
    (["--sigma", "0.5"], "--sigma/--copies only apply with --smoothed"),
])
def test_attack_flags_that_need_another_are_refused(extra, needle):
    from robustmaxup.cli.attack import attack_config
    from robustmaxup.errors import UserError

    with pytest.raises(UserError, match=needle):
        attack_config(_attack_args(*extra), 0.5, None)


def test_attack_default_out_shows_the_eps_value_not_its_fraction():
    from robustmaxup.cli.attack import build_parser, default_out

    args = build_parser().parse_args(["m.pt", "--dataset", "digits", "--eps", "8/255"])
    assert default_out(args, 8 / 255) == Path("attack_m_autoattack_Linf_eps0.0313725.json")


def _evaluate(monkeypatch, argv):
    import robustmaxup.attacks.runner as attack_runner

    calls = []
    monkeypatch.setattr(attack_runner, "evaluate_dataset",
                        lambda model, split, indices, config, **kw: calls.append((indices, config, kw)))
    assert main(["attack", *argv]) == 0
    return calls[0]


def test_attack_run_gets_every_setting(untrained_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    indices, cfg, kw = _evaluate(monkeypatch, [untrained_ckpt, "--dataset", "digits", "--eps", "8/255", "--attack",
                                               "pgd", "--n-examples", "5", "--seed", "7", "--out", str(out),
                                               "--resume", "--quiet", "--device", "cpu", "--save-adv",
                                               str(tmp_path / "adv.pt")])
    assert indices == [0, 72, 144, 216, 288]          # floor(i * 360 / 5)
    assert (cfg.eps, cfg.steps, cfg.sigma) == (8 / 255, 10, None)
    assert (kw["seed"], kw["resume"], kw["progress"], kw["out"]) == (7, True, False, out)
    assert kw["save_adv"] == str(tmp_path / "adv.pt")
    assert kw["extra_record"]["config"]["eps_value"] == 8 / 255


def test_attack_run_defaults_and_the_checkpoints_sigma(untrained_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    indices, cfg, kw = _evaluate(monkeypatch, [untrained_ckpt, "--dataset", "digits", "--eps", "0.5", "--smoothed",
                                               "--device", "cpu"])
    assert len(indices) == 360 and (cfg.version, cfg.sigma, cfg.copies, cfg.norm) == ("rand", 0.25, 32, "Linf")
    assert (kw["seed"], kw["resume"], kw["progress"]) == (0, False, True)
    assert kw["out"] == Path("attack_digits_autoattack_Linf_eps0.5_smoothed.json")


def test_attack_refuses_an_existing_output_without_resume(untrained_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    out.write_text("{}")
    import robustmaxup.attacks.runner as attack_runner

    monkeypatch.setattr(attack_runner, "evaluate_dataset", lambda *a, **kw: None)
    assert main(["attack", untrained_ckpt, "--dataset", "digits", "--eps", "0.5", "--out", str(out)]) == 2
    _one_line(capsys)
    assert out.read_text() == "{}"


def test_attack_refuses_zero_examples(capsys):
    assert main(["attack", "m.pt", "--dataset", "digits", "--eps", "0.1", "--n-examples", "0"]) == 2
    assert _one_line(capsys) == "robustmaxup attack: error: --n-examples must be an integer >= 1, got 0"


# ----------------------------------------------------------------------------- train
def _cfg(*argv):
    from robustmaxup.cli.train import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(list(argv)))


def test_train_float_flags_take_fractions_and_resume_passes():
    cfg = _cfg("--dataset", "digits", "--out", "x", "--sigma", "1/4", "--resume")
    assert cfg.method_args == {"sigma": 0.25} and cfg.resume is True


def test_train_flags_override_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"dataset": "digits", "out": "x", "seed": 3, "epochs": 5, "awp_gamma": 0.01}))
    cfg = _cfg("--config", str(path), "--seed", "1", "--awp-warmup", "2")
    assert (cfg.seed, cfg.epochs, cfg.dataset, cfg.method_args) == (1, 5, "digits", {})  # --config itself no value
    assert (cfg.perturbation.name, cfg.perturbation.args["gamma"], cfg.perturbation.args["warmup"]) == (
        "awp", 0.01, 2)


@pytest.mark.parametrize("extra, line", [
    (["--schedule", "cosine", "--lr-gamma", "0.5"],
     "--lr-gamma applies to --schedule step or multistep; this run's schedule is cosine"),
    (["--schedule", "multistep", "--lr-step", "3"],
     "--lr-step applies to --schedule step; this run's schedule is multistep"),
])
def test_train_schedule_flags_for_another_schedule_are_refused(tmp_path, monkeypatch, capsys, extra, line):
    import robustmaxup.cli.train as train_cli

    monkeypatch.setattr(train_cli, "train", lambda cfg: None)   # never trains, even if not refused
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(out), *extra]) == 2
    assert _one_line(capsys) == f"robustmaxup train: error: {line}"
    assert not out.exists()


def test_a_perturbation_option_needs_its_own_switch_not_another(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--awp-gamma", "0.01", "--amp-steps", "2"]) == 2
    assert _one_line(capsys) == "robustmaxup train: error: --amp-* options need --amp-eps itself"
    assert not out.exists()


def test_list_recipes_with_quiet_prints_the_table(capsys):
    assert main(["train", "--list-recipes", "--quiet"]) == 0
    assert "smoothadv" in capsys.readouterr().out


# ----------------------------------------------------------------------------- analyze
PREDICT = "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:00.100\n"
CERTIFY = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01.000\n"


@pytest.mark.parametrize("extra, flag", [(["--radii", "0"], "--radii"), (["--plot", "p.png"], "--plot")])
def test_analyze_refuses_radii_or_plot_for_predict_files(tmp_path, monkeypatch, capsys, extra, flag):
    monkeypatch.chdir(tmp_path)
    Path("p.tsv").write_text(PREDICT)
    assert main(["analyze", "p.tsv", *extra]) == 2
    assert _one_line(capsys) == (f"robustmaxup analyze: error: {flag} is for certify files; predict "
                                 "files have no radii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tsv"]


def test_analyze_predict_output_has_notes_but_no_radius_legend(tmp_path, monkeypatch, capsys):
    from robustmaxup.certify import analysis

    monkeypatch.chdir(tmp_path)
    Path("p.tsv").write_text(PREDICT)
    assert main(["analyze", "p.tsv", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == ["# p.tsv: 1 images", "predict,p.tsv", "accuracy,1.000", "abstain,0.000"]
    assert all(analysis.THRESHOLD_NOTE not in line for line in lines)


def test_analyze_warns_when_the_files_cover_other_images(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("a.tsv").write_text(CERTIFY)
    Path("b.tsv").write_text(CERTIFY.replace("\n0\t", "\n1\t"))
    assert main(["analyze", "a.tsv", "b.tsv", "--radii", "0", "--quiet"]) == 0
    assert capsys.readouterr().err.strip() == ("warning: the files differ in images; their columns are "
                                               "not a like-for-like comparison")


def test_analyze_default_format_is_markdown(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("c.tsv").write_text(CERTIFY)
    assert main(["analyze", "c.tsv", "--radii", "0", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("|") and lines[1].startswith("|") and "---" in lines[1]


# ----------------------------------------------------------------------------- export
def test_export_state_dict_through_the_cli(untrained_ckpt, tmp_path):
    from robustmaxup.checkpoints import load_model

    out = tmp_path / "w.pt"
    assert main(["export", untrained_ckpt, "--format", "state_dict", "--out", str(out), "--quiet"]) == 0
    saved = torch.load(out, map_location="cpu", weights_only=True)
    model, _ = load_model(untrained_ckpt, dataset="digits", num_classes=10, device="cpu")
    assert sorted(saved) == sorted(model.state_dict())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_export_needs_out_and_names_itself(untrained_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", untrained_ckpt, "--format", "cohen"]) == 2
    assert _one_line(capsys) == ("robustmaxup export: error: the following arguments are required: "
                                 "--out (see --help)")
    out = tmp_path / "w.pt"
    out.write_text("mine")
    assert main(["export", untrained_ckpt, "--format", "cohen", "--out", str(out)]) == 2
    assert _one_line(capsys).startswith("robustmaxup export: error: ") and out.read_text() == "mine"
