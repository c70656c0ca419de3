"""The eleventh session's fixes to what earlier audits left over: a refused choice names the
closest one, an error under torchrun is reported once (by rank 0) unless it may be a rank's own,
a former flag has one shared action, an output directory that did not exist is logged when
created, and ``--lr-milestones`` means what its help says. Expected lines are written by hand."""

from __future__ import annotations

import argparse
import logging

import pytest

from robustmaxup.cli import main
from robustmaxup.errors import UserError, did_you_mean, ref


# ----------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize("value, options, hint", [
    ("linf", ["Linf", "L2"], "; did you mean 'Linf'?"),
    ("LINF", ["Linf", "L2"], "; did you mean 'Linf'?"),
    ("l2", ["Linf", "L2"], "; did you mean 'L2'?"),
    ("cifar01", ["cifar10", "cifar100", "digits"], "; did you mean 'cifar10'?"),
    ("Cosine", ["step", "multistep", "cosine"], "; did you mean 'cosine'?"),
    ("zzzz", ["Linf", "L2"], ""),
    (3, [1, 2, 3.0], ""),  # not a string: nothing to spell
])
def test_did_you_mean(value, options, hint):
    assert did_you_mean(value, options) == hint


def test_did_you_mean_prefers_the_same_word_in_another_case_over_a_closer_spelling():
    # 'mixup' is one letter from 'Mixup' by difflib too, but 'kmixup' must not win over it
    assert did_you_mean("MIXUP", ["kmixup", "mixup"]) == "; did you mean 'mixup'?"


def test_did_you_mean_writes_settings_with_ref():
    assert did_you_mean("sigmma", ["sigma", "seed"], show=ref) == "; did you mean sigma?"


@pytest.mark.parametrize("argv, line", [
    (["trian"], "robustmaxup: error: unknown command 'trian'; choose from train, certify, predict, "
                "analyze, attack, export; did you mean 'train'?"),
    (["train", "--dataset", "digits", "--method", "gaussain", "--sigma", "0.25", "--out", "r"],
     "robustmaxup train: error: unknown method 'gaussain'; known: consistency, cutmix, gaussian, kmixup, "
     "macer, maxup, mixup, pgd_at, smoothadv, smoothmix, standard, trades; did you mean 'gaussian'?"),
    (["train", "--dataset", "digits", "--sigma", "0.25", "--out", "r", "--schedule", "Cosine"],
     "robustmaxup train: error: argument --schedule: invalid choice: 'Cosine' (choose from 'step', "
     "'multistep', 'piecewise', 'cosine'); did you mean 'cosine'? (see --help)"),
    (["attack", "m.pt", "--dataset", "digits", "--eps", "0.1", "--norm", "l2"],
     "robustmaxup attack: error: --norm must be one of Linf, L2, L1, got 'l2'; did you mean 'L2'?"),
    (["train", "--recipe", "Cohen", "--dataset", "digits", "--out", "r"],
     "robustmaxup train: error: argument --recipe: invalid choice: 'Cohen' (choose from 'amp', 'awp_at', "
     "'awp_trades', 'cohen', 'consistency', 'consistency_s0.5', 'consistency_s1.0', 'macer', 'maxup', "
     "'pgd_at', 'smoothadv', 'smoothmix', 'smoothmix_s0.5', 'smoothmix_s1.0', 'trades'); did you mean "
     "'cohen'? (see --help)"),
])
def test_a_refused_choice_names_the_closest(argv, line, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "attack":
        (tmp_path / "m.pt").write_bytes(b"")
        import robustmaxup.cli.attack as attack

        monkeypatch.setattr(attack, "load_model", lambda *a, **k: pytest.fail("checks come first"),
                            raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == line
    assert not (tmp_path / "r").exists()


def test_a_choice_with_no_close_option_has_no_hint(capsys):
    assert main(["train", "--dataset", "digits", "--sigma", "0.25", "--out", "r", "--schedule", "zz"]) == 2
    assert capsys.readouterr().err.strip().endswith("(choose from 'step', 'multistep', 'piecewise', "
                                                    "'cosine') (see --help)")


# ----------------------------------------------------------------------------- under torchrun
def _fail(args: argparse.Namespace) -> None:
    raise UserError("bad input")


def _runner():
    from robustmaxup.cli.args import make_parser
    from robustmaxup.cli.common import run

    return lambda argv: run("x", _fail, make_parser("x", ""), argv)


def _as_rank(monkeypatch, rank: int, *, joined: bool = False) -> None:
    import robustmaxup.runtime.dist as dist

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "_joined", joined)


def test_rank_0_reports_an_error_as_a_plain_run_does(monkeypatch, capsys):
    _as_rank(monkeypatch, 0)
    assert _runner()([]) == 2
    assert capsys.readouterr().err == "robustmaxup x: error: bad input\n"


def test_other_ranks_leave_an_error_of_the_shared_checks_to_rank_0(monkeypatch, capsys):
    _as_rank(monkeypatch, 1)
    assert _runner()([]) == 2  # still fails: torchrun sees every rank's status
    assert _runner()(["--no-such-flag"]) == 2  # a usage error: the same argv on every rank
    assert capsys.readouterr().err == ""


def test_a_rank_that_joined_the_group_reports_its_error_under_its_name(monkeypatch, capsys):
    _as_rank(monkeypatch, 1, joined=True)
    assert _runner()([]) == 2
    assert capsys.readouterr().err == "robustmaxup x (rank 1): error: bad input\n"


def test_joining_the_process_group_is_what_marks_errors_as_a_ranks_own(monkeypatch):
    import torch

    import robustmaxup.runtime.dist as dist

    monkeypatch.setattr(dist, "_joined", False)  # restored after the test
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    rank1 = dist.Dist(rank=1, world=2)
    assert not rank1.owns_its_errors and dist.Dist(rank=0, world=2).owns_its_errors
    assert rank1.init(torch.device("cpu")) is True
    assert rank1.owns_its_errors


# ----------------------------------------------------------------------------- renamed flags
def test_one_action_keeps_former_flags_of_train_and_attack(capsys):
    from robustmaxup.cli import attack, train
    from robustmaxup.cli.args import Renamed

    for module in (train, attack):
        actions = [a for a in module.build_parser()._actions if isinstance(a, Renamed)]
        assert actions, module.__name__
        assert all(a.help == argparse.SUPPRESS and a.default == argparse.SUPPRESS for a in actions)
    assert main(["attack", "m.pt", "--dataset", "digits", "--eps", "1", "--m", "4"]) == 2
    assert capsys.readouterr().err.strip() == (
        "robustmaxup attack: error: --m was renamed --copies (one name for noise copies, as in train) (see --help)")
    assert main(["train", "--mix-alpha", "1", "--alpha", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "robustmaxup train: error: --alpha was renamed --mix-alpha (the Beta(a, a) of mixup, CutMix and "
        "k-mixup; alpha means the failure probability in certify) (see --help)")


def test_a_former_flag_not_given_leaves_no_value_behind():
    from robustmaxup.cli import attack

    args = attack.build_parser().parse_args(["m.pt", "--dataset", "digits", "--eps", "1"])
    assert "m" not in vars(args)


# ----------------------------------------------------------------------------- output directories
def test_a_new_output_directory_is_logged_once(tmp_path, caplog):
    from robustmaxup.runtime.io import atomic_write_text, ensure_writable_dir

    caplog.set_level(logging.INFO, logger="robustmaxup")
    atomic_write_text(tmp_path / "a" / "b" / "f.txt", "x")
    atomic_write_text(tmp_path / "a" / "b" / "g.txt", "y")
    ensure_writable_dir(tmp_path / "a" / "b")
    ensure_writable_dir(tmp_path / "c")
    created = [r.getMessage() for r in caplog.records if r.getMessage().startswith("created directory")]
    assert created == [f"created directory {tmp_path / 'a' / 'b'}", f"created directory {tmp_path / 'c'}"]


def test_a_file_where_a_directory_is_needed_is_one_error(tmp_path):
    from robustmaxup.runtime.io import atomic_write_text, ensure_writable_dir

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(UserError, match="cannot create directory"):
        ensure_writable_dir(tmp_path / "taken")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_text(tmp_path / "taken" / "f.txt", "x")
    assert (tmp_path / "taken").read_text() == "a file"


def test_the_cli_says_when_it_creates_the_output_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--sigma", "0.25",
                 "--epochs", "1", "--max-train", "64", "--val-size", "32", "--batch", "32",
                 "--out", "runs/new/one"]) == 0
    err = capsys.readouterr().err
    assert "created directory runs/new/one\n" in err
    assert main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--sigma", "0.25",
                 "--epochs", "1", "--max-train", "64", "--val-size", "32", "--batch", "32",
                 "--out", "runs/new/one", "--resume"]) == 0
    assert "created directory" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- lr milestones
def test_a_milestone_decays_the_lr_from_the_next_logged_epoch_as_the_help_says():
    from robustmaxup.train import TrainConfig, lr_at, options

    help_text = next(o.help for o in options() if o.name == "lr_milestones")
    assert "100 decays it from the logged epoch 101 on" in help_text
    cfg = TrainConfig(dataset="digits", out="r", schedule="multistep", lr=0.1, lr_milestones=(100,),
                      epochs=200)
    logged = {e + 1: lr_at(cfg, e) for e in range(200)}  # the loop logs 0-based epoch e as e + 1
    assert logged[100] == pytest.approx(0.1) and logged[101] == pytest.approx(0.01)
