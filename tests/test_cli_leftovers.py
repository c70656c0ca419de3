"""The eleventh session's fixes: what earlier audits left over (a refused choice names the
closest one; an error under torchrun is reported once, by rank 0, unless it may be a rank's own;
one shared action for former flags; a created output directory is logged; ``--lr-milestones``
means what its help says; each dataset's default architecture) and what a Cohen et al. user's
audit found (whole floats as counts, radii rounded up in the TSV, the positional form with
options first, other tools' flag spellings, a Certificate that unpacks as Cohen's tuple).
Expected lines are written by hand."""

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


# ----------------------------------------------------------------------------- default architecture
@pytest.mark.parametrize("dataset", ["digits", "cifar10", "cifar100", "imagenet"])
def test_each_dataset_trains_its_own_default_architecture(dataset):
    import torch

    from robustmaxup.data import DATASETS, get_info
    from robustmaxup.models import build_model
    from robustmaxup.train import TrainConfig

    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "imagenet"}  # a new one is listed here
    want = {"digits": "digits_cnn", "cifar10": "cifar_resnet110", "cifar100": "cifar_resnet110",
            "imagenet": "resnet50"}[dataset]
    cfg = TrainConfig(dataset=dataset, out="r")
    cfg.validate()
    assert cfg.arch == want and cfg.flat()["arch"] == want  # recorded as the name, never as "default"
    assert TrainConfig(dataset=dataset, out="r", arch="preact_resnet18").arch == "preact_resnet18"
    info = get_info(dataset)
    model = build_model(want, info.num_classes, in_channels=info.in_channels).eval()
    with torch.no_grad():
        assert model(torch.rand(1, *info.image_shape)).shape == (1, info.num_classes)


def test_a_dataset_without_a_default_architecture_needs_one(monkeypatch):
    import dataclasses

    from robustmaxup.data import DATASETS, get_info
    from robustmaxup.runtime.checks import FieldError
    from robustmaxup.train import TrainConfig

    monkeypatch.setitem(DATASETS._items, "mine", dataclasses.replace(get_info("digits"), name="mine",
                                                                      default_arch=None))
    cfg = TrainConfig(dataset="mine", out="r")
    with pytest.raises(FieldError, match="arch is required: dataset mine has no default architecture"):
        cfg.validate()
    TrainConfig(dataset="mine", out="r", arch="digits_cnn").validate()


def test_train_without_arch_uses_and_records_the_datasets(tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "digits", "--sigma", "0.25", "--epochs", "1", "--max-train", "64",
                 "--val-size", "32", "--batch", "32", "--out", "r"]) == 0
    assert "training digits_cnn with gaussian on digits" in capsys.readouterr().err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["arch"] == "digits_cnn"


# ----------------------------------------------------------------------------- a Cohen user's audit
def test_a_whole_float_count_is_one_field_error_naming_the_integer():
    from robustmaxup.runtime.checks import FieldError, check_int

    np = pytest.importorskip("numpy")
    assert check_int("n", np.int64(7)) == 7 and type(check_int("n", np.int64(7))) is int
    for value, message in [(1e5, "n must be an integer, got the float 100000.0; write 100000"),
                           (2.5, "n must be an integer, got 2.5"), (True, "n must be an integer, got True")]:
        with pytest.raises(FieldError) as e:
            check_int("n", value)
        assert str(e.value) == message


def test_smooth_refuses_float_counts_in_one_line_and_takes_numpy_ints():
    import numpy as np
    import torch

    from robustmaxup.certify import Smooth
    from robustmaxup.runtime.checks import FieldError
    from classifiers import Constant

    smooth = Smooth(Constant(3), 10, 0.25)
    x = torch.rand(1, 4, 4)
    for kwargs, field in [(dict(n0=10, n=1e3, batch_size=100), "n"), (dict(n0=1e1, n=100, batch_size=100), "n0"),
                          (dict(n0=10, n=100, batch_size=100.0), "batch_size")]:
        with pytest.raises(FieldError, match=f"^{field} must be an integer, got the float"):
            smooth.certify(x, alpha=0.001, generator=torch.Generator().manual_seed(0), **kwargs)
    with pytest.raises(FieldError, match="^n must be an integer, got the float"):
        smooth.predict(x, 1e3, 0.001, 100)
    cert = smooth.certify(x, np.int64(10), np.int64(1000), 0.001, np.int64(100), torch.Generator().manual_seed(0))
    assert cert.prediction == 3 and cert.n_used == 1000


def test_certify_dataset_refuses_a_float_n_before_writing_anything(tmp_path):
    from robustmaxup.certify import Smooth
    from robustmaxup.certify.runner import certify_dataset
    from robustmaxup.data import load_split
    from robustmaxup.runtime.checks import FieldError
    from classifiers import Constant

    split = load_split("digits", "test")
    smooth = Smooth(Constant(3), 10, 0.25)
    with pytest.raises(FieldError, match="^n must be an integer, got the float 1000.0; write 1000"):
        certify_dataset(smooth, split, [0, 1], n0=10, n=1e3, out=tmp_path / "c.tsv", progress=False)
    assert not list(tmp_path.iterdir())


def test_a_certificate_unpacks_as_cohens_tuple():
    from robustmaxup.certify import ABSTAIN, Certificate

    prediction, radius = Certificate(4, 0.5, 0.9, (1, 9))
    assert (prediction, radius) == (4, 0.5)
    assert tuple(Certificate(ABSTAIN, 0.0, 0.4, (5, 5))) == (ABSTAIN, 0.0)


@pytest.mark.parametrize("radius, written", [(0.2499996, 0.249999), (0.29, 0.29), (0.51, 0.51), (0.0, 0.0),
                                             (1.9057282816949572, 1.905728), (0.1234565, 0.123456),
                                             (3e-7, 0.0), (0.9999999, 0.999999)])
def test_a_radius_is_kept_as_written_rounded_down(radius, written):
    from robustmaxup.certify.tsv import CERTIFY, CertifyRow, radius_as_written

    assert radius_as_written(radius) == written and written <= radius
    row = CertifyRow(0, 1, 1, radius, 1)
    assert row.radius == written
    assert CertifyRow.from_line(row.to_line(), CERTIFY) == row  # the file gives the row back exactly


def test_a_radius_just_below_a_threshold_is_not_certified_there_in_memory_or_from_the_file(tmp_path):
    from robustmaxup.certify.analysis import CertifyResults, certified_accuracy, read_certify_tsv
    from robustmaxup.certify.tsv import CERTIFY, CertifyRow

    rows = [CertifyRow(0, 1, 1, 0.2499996, 1), CertifyRow(1, 2, 2, 0.75, 1)]
    path = tmp_path / "c.tsv"
    path.write_text("\n".join([CERTIFY.header, *(r.to_line() for r in rows)]) + "\n")
    for res in (CertifyResults.from_rows(rows), read_certify_tsv(path)):
        assert list(certified_accuracy(res, [0.25])) == [0.5]


def test_cohens_and_smoothadvs_flag_spellings_are_answered_with_ours(capsys):
    cases = [(["train", "--dataset", "digits", "--noise_sd", "0.25", "--out", "r"], "--noise_sd 0.25; did you mean --sigma?"),
             (["train", "--dataset", "digits", "--sigma", "0.25", "--outdir", "r"], "--outdir r; did you mean --out?"),
             (["certify", "m.pt", "--dataset", "digits", "--batch_size", "10"], "--batch_size 10; did you mean --batch?"),
             (["certify", "m.pt", "--dataset", "digits", "--sequentail"], "--sequentail; did you mean --sequential?"),
             (["attack", "m.pt", "--dataset", "digits", "--eps", "1", "--epsilon", "2"], "--epsilon 2; did you mean --eps?"),
             (["certify", "m.pt", "--dataset", "digits", "--zzzz"], "--zzzz (see --help)")]
    for argv, tail in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"robustmaxup {argv[0]}: error: unrecognized arguments: "), err
        assert err[0].endswith(tail if tail.endswith("(see --help)") else tail + " (see --help)"), err[0]


def test_a_former_flag_is_never_offered_as_the_closest(capsys):
    assert main(["train", "--dataset", "digits", "--sigma", "0.25", "--out", "r", "--alphaa", "1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean --alpha?" not in err


def test_a_run_directory_given_as_a_checkpoint_names_its_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (run / name).write_text("")
    assert main(["certify", str(run), "--dataset", "digits"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"robustmaxup certify: error: checkpoint {run} is a directory, not a file; did you mean "
        f"{run / 'best.pt'} or {run / 'last.pt'}?")


def test_max_says_which_images_it_spreads_over(digits_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["certify", digits_checkpoint, "--dataset", "digits", "--n0", "10", "--n", "50", "--batch", "50"]
    assert main([*base, "--skip", "2", "--max", "5", "--out", "a.tsv"]) == 0
    assert ("--max 5: 5 images spread evenly over the test split, indices 0, 72, 144, ..., 288 (Cohen "
            "et al.'s certify.py stops at that index instead)") in capsys.readouterr().err
    assert main([*base, "--skip", "100", "--max", "5", "--out", "b.tsv"]) == 0  # 4 images: --max changes nothing
    assert "--max" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- a resume audit
@pytest.mark.parametrize("command", ["certify", "predict"])
@pytest.mark.parametrize("failure, code", [(KeyboardInterrupt, 130), ("disk full", 2)])
def test_an_output_that_failed_before_its_first_row_is_removed(command, failure, code, digits_checkpoint,
                                                                tmp_path, capsys, monkeypatch):
    import robustmaxup.certify.runner as runner

    argv = [command, digits_checkpoint, "--dataset", "digits", "--n", "50", "--batch", "50", "--max", "3",
            "--out", str(tmp_path / "o.tsv"), *(["--n0", "10"] if command == "certify" else [])]
    real = runner.atomic_write_json

    def fail_at_the_first_sidecar(path, obj):
        if failure == "disk full":
            raise UserError(f"cannot write {path}: No space left on device")
        real(path, obj)
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "atomic_write_json", fail_at_the_first_sidecar)
    assert main(argv) == code
    assert not list(tmp_path.iterdir())  # neither a header-only TSV nor a sidecar is left
    assert "removed " in capsys.readouterr().err
    monkeypatch.setattr(runner, "atomic_write_json", real)
    assert main(argv) == 0  # the same command simply runs again
    assert len((tmp_path / "o.tsv").read_text().splitlines()) == 4


def test_an_output_with_rows_is_kept_for_resume(digits_checkpoint, tmp_path, capsys, monkeypatch):
    import robustmaxup.certify.runner as runner

    argv = ["certify", digits_checkpoint, "--dataset", "digits", "--n0", "10", "--n", "50", "--batch", "50",
            "--max", "3", "--out", str(tmp_path / "o.tsv")]

    def stop_after_the_first_row(name):
        if name == "certify.row":
            raise KeyboardInterrupt
    monkeypatch.setattr(runner, "fault_point", stop_after_the_first_row)
    assert main(argv) == 130
    assert len((tmp_path / "o.tsv").read_text().splitlines()) == 2 and (tmp_path / "o.tsv.json").exists()
    monkeypatch.setattr(runner, "fault_point", lambda name: None)
    assert main([*argv, "--resume"]) == 0
    assert len((tmp_path / "o.tsv").read_text().splitlines()) == 4
    capsys.readouterr()


def test_an_attack_resumes_with_its_default_step_size_given_and_names_a_changed_batch_once(
        digits_checkpoint, tmp_path, capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    argv = ["attack", digits_checkpoint, "--dataset", "digits", "--attack", "pgd", "--eps", "0.1",
            "--steps", "20", "--n-examples", "6", "--batch", "3", "--out", "a.json"]
    assert main(argv) == 0
    recorded = json.loads((tmp_path / "a.json").read_text())["attack_config"]
    assert recorded["step_size"] == pytest.approx(2.5 * 0.1 / 20)  # recorded as used, not null
    capsys.readouterr()
    assert main([*argv, "--resume", "--step-size", "0.0125"]) == 0  # the default, given: the same run
    assert "a.json is complete (6 examples); nothing to do" in capsys.readouterr().err
    assert main([*[a if a != "3" else "2" for a in argv], "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("--batch (3, now 2)") == 1 and "batch (3" not in err.replace("--batch (3", ""), err


def test_a_certify_resume_compares_the_arithmetic_as_it_ran_not_as_requested(digits_checkpoint, tmp_path,
                                                                              capsys, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    argv = ["certify", digits_checkpoint, "--dataset", "digits", "--n0", "10", "--n", "50", "--batch", "50",
            "--max", "2", "--out", "c.tsv"]
    assert main(argv) == 0  # auto on a CPU: fp32
    assert main([*argv, "--resume", "--precision", "fp32"]) == 0  # the same arithmetic
    assert "is complete" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
    assert sidecar["precision"] == "auto" and sidecar["autocast"] is None
    # a file whose rows ran in bf16 (auto on CUDA) is not continued in fp32
    (tmp_path / "c.tsv.json").write_text(json.dumps({**sidecar, "autocast": "torch.bfloat16"}))
    assert main([*argv, "--resume"]) == 2
    assert ("the arithmetic (autocast dtype, from the precision and the device) ('torch.bfloat16', now None)"
            in capsys.readouterr().err)
