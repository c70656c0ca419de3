"""What a new user met on the command line (from a new-user audit, 2026-11-25), each now one
clear line or the expected behaviour:

* ``train --out DIR --resume`` alone continues the run from ``DIR/config.json``; a finished run
  says it is complete; the resume line says after which epoch of how many it goes on;
* a run that changes its recipe's values names them in the recipe line;
* ``attack --resume`` of a missing output says it starts it; an unrelated file at ``--save-adv``
  is not offered a resume; ``attack --version`` (the program's version to everyone) was renamed;
* a ``--class-order`` that looks like a missing file, a bad ``--device``, a batch larger than
  the training images: each names what to do.
"""

from __future__ import annotations

import json
import logging

import pytest

from robustmaxup.certify import bounds
from robustmaxup.cli import attack as attack_cli
from robustmaxup.cli import certify as certify_cli
from robustmaxup.cli import train as train_cli
from robustmaxup.train import recipes

TINY = ["--dataset", "digits", "--arch", "digits_cnn", "--max-train", "200", "--max-eval", "20",
        "--batch", "50", "--sigma", "0.25"]


def _err(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def test_out_and_resume_alone_continue_a_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_cli.main([*TINY, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert train_cli.main(["--out", out, "--resume", "--epochs", "2"]) == 0   # no --dataset needed
    err = capsys.readouterr().err
    assert f"resuming {out} after epoch 1 of 2" in err and "epoch 2/2" in err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["epochs"], saved["max_train"], saved["arch"]) == (2, 200, "digits_cnn")
    assert train_cli.main(["--out", out, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{out} is complete (2 of 2 epochs); nothing to do" in err and "training digits_cnn" not in err
    assert train_cli.main(["--out", out, "--resume", "--arch", "cifar_resnet20"]) == 2   # still checked
    err = _err(capsys)
    assert "cannot resume run directory" in err and "arch ('digits_cnn', now 'cifar_resnet20')" in err


def test_a_changed_setting_under_resume_is_still_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train_cli.main([*TINY, "--epochs", "1", "--out", out]) == 0
    capsys.readouterr()
    assert train_cli.main(["--out", out, "--resume", "--lr", "0.5"]) == 2
    assert "other settings: --lr (0.1, now 0.5)" in _err(capsys)


def test_out_without_resume_does_not_read_the_runs_config(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dataset": "digits", "out": str(out)}))
    assert train_cli.main(["--out", str(out)]) == 2
    assert _err(capsys) == "robustmaxup train: error: --dataset is required"


def test_the_recipe_line_names_the_values_given_over_it(tmp_path, capsys):
    line = recipes.run_differences("cohen", bf16=False, held_out=0, changed=["epochs", "method"])
    assert line == ("recipe cohen: the authors' set-up, except inputs normalised inside the model, "
                    "the last short batch of an epoch dropped; given over the recipe: epochs, method")
    assert train_cli.main(["--recipe", "cohen", *TINY, "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    logged = [x for x in capsys.readouterr().err.splitlines() if x.startswith("recipe cohen:")]
    assert logged == [next(iter(logged))] and logged[0].endswith(
        "given over the recipe: --arch, --batch, --epochs")


@pytest.fixture(scope="module")
def ckpt(untrained_ckpt):
    return untrained_ckpt


def test_attack_resume_of_a_missing_output_says_it_starts_it(ckpt, tmp_path, capsys):
    out = tmp_path / "typo.json"
    assert attack_cli.main([ckpt, "--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "1",
                            "--n-examples", "4", "--out", str(out), "--resume"]) == 0
    assert f"--resume: {out} does not exist yet; starting it" in capsys.readouterr().err and out.exists()


def test_an_unrelated_file_at_save_adv_is_not_offered_a_resume(ckpt, tmp_path, capsys):
    other = tmp_path / "other.pt"
    other.write_text("not ours")
    assert attack_cli.main([ckpt, "--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--n-examples", "4",
                            "--out", str(tmp_path / "a.json"), "--save-adv", str(other)]) == 2
    assert _err(capsys) == (f"robustmaxup attack: error: {other} already exists and is never overwritten; "
                            f"choose another output (--save-adv)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.pt"]


def test_an_interrupted_attack_is_offered_its_resume(ckpt, tmp_path, capsys):
    out = tmp_path / "a.json"
    args = [ckpt, "--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "1", "--n-examples", "4",
            "--out", str(out), "--quiet"]
    assert attack_cli.main(args) == 0
    capsys.readouterr()
    assert attack_cli.main(args) == 2
    assert _err(capsys).endswith("already exists; resume the run (--resume) to continue or re-check it, or "
                                 "choose another output (--out)")


def test_class_order_that_looks_like_a_missing_file_is_named(ckpt, tmp_path, capsys):
    for value in ("classes.txt", str(tmp_path / "nope" / "names")):
        assert certify_cli.main([ckpt, "--dataset", "digits", "--class-order", value, "--max", "1"]) == 2
        assert f"no file {value!r} (give a file, one name per line, or names with commas)" in _err(capsys)


def test_a_bad_device_names_the_choices(ckpt, capsys):
    assert certify_cli.main([ckpt, "--dataset", "digits", "--device", "gpu", "--max", "1", "--n", "10"]) == 2
    assert _err(capsys) == "robustmaxup certify: error: bad device 'gpu': use auto, cpu, cuda or cuda:N"


def test_a_batch_larger_than_the_training_images_says_how_to_fix_it(tmp_path, capsys):
    assert train_cli.main([*TINY[:-4], "--batch", "256", "--max-train", "100", "--out", str(tmp_path / "r")]) == 2
    assert _err(capsys).endswith("no training step would be taken; lower it or train on more images "
                                 "(--max-train, --val-size)")


def test_a_hopeless_n_is_a_warning_line(caplog):
    with caplog.at_level(logging.WARNING, logger="robustmaxup"):
        assert not bounds.can_ever_certify(5, 0.001)
    assert caplog.records[0].getMessage().startswith("warning: n=5 samples can never certify at alpha=0.001")


def test_the_analysis_note_carries_the_sampling_settings():
    import numpy as np

    from robustmaxup.certify import analysis

    col = np.zeros(3, dtype=np.int64)

    def note(**meta):
        return analysis.CertifyResults("a", "a", col, col, col, np.zeros(3), col,
                                       meta={"split": "test", "split_size": 360, "skip": 20, **meta}).subset_note()

    fixed = {"sigma": 0.25, "n0": 100, "n": 100000, "alpha": 0.001, "sequential": None}
    assert note(**fixed) == "3 of 360 test images (skip 20); sigma 0.25, n0 100, n 100000, alpha 0.001"
    seq = {**fixed, "sequential": {"n_max": 20000, "radii": [0.25]}}
    assert note(**seq) == "3 of 360 test images (skip 20); sigma 0.25, n0 100, n_max 20000, alpha 0.001"
    assert note(sigma=0.5, n=True) == "3 of 360 test images (skip 20); sigma 0.5"   # no bool as a number
    assert note(n=2_000_000, alpha=1e-5) == "3 of 360 test images (skip 20); n 2000000, alpha 1e-05"
    assert note() == "3 of 360 test images (skip 20)"                              # no sidecar: no settings


def test_a_zero_default_is_shown_and_a_switch_default_is_not(capsys):
    assert certify_cli.main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED random seed (default: 0)" in text
    assert "(default: False)" not in text and "(default: None)" not in text


def test_the_sidecar_records_no_autocast_as_null(ckpt, tmp_path):
    out = tmp_path / "c.tsv"
    assert certify_cli.main([ckpt, "--dataset", "digits", "--max", "1", "--n", "20", "--out", str(out),
                             "--quiet"]) == 0
    assert json.loads((tmp_path / "c.tsv.json").read_text())["autocast"] is None   # CPU: fp32


def test_a_smoothed_attack_says_how_robust_accuracy_meets_the_rescorings(ckpt, tmp_path, capsys):
    assert attack_cli.main([ckpt, "--dataset", "digits", "--attack", "pgd", "--norm", "L2", "--eps", "0.5",
                            "--steps", "1", "--smoothed", "--copies", "2", "--n-examples", "4",
                            "--out", str(tmp_path / "s.json")]) == 0
    err = capsys.readouterr().err
    assert "(correct after every attack and all 5 re-scorings; pgd L2 eps=0.5; after: pgd" in err
    assert "each of 5 re-scorings of x_adv alone: accuracy" in err


def test_a_step_structure_that_changes_nothing_is_refused(tmp_path, capsys):
    assert train_cli.main([*TINY, "--step-structure", "joint", "--epochs", "1", "--out", str(tmp_path / "g")]) == 2
    assert _err(capsys) == ("robustmaxup train: error: --step-structure joint changes nothing for gaussian as "
                            "configured: its reference takes one step per loader batch; drop it")
    assert not (tmp_path / "g").exists()
    assert train_cli.main([*TINY, "--method", "smoothadv", "--copies", "2", "--attack-steps", "1",
                           "--step-structure", "joint", "--epochs", "1", "--out", str(tmp_path / "s")]) == 0


@pytest.mark.parametrize("name, text", [("config.json", '{"foo": 1}'), ("metrics.jsonl", "mine\n"),
                                        ("best.pt", "not a checkpoint")])
def test_resume_never_writes_over_files_that_are_not_a_runs(tmp_path, capsys, name, text):
    out = tmp_path / "d"
    out.mkdir()
    (out / name).write_text(text)
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out), "--resume"]) == 2
    assert _err(capsys).endswith("holds run files but neither a last.pt nor a config.json of robustmaxup "
                                 "train; it is not a run directory to resume (its files are never written over)")
    assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_text() == text


def test_a_run_killed_before_its_first_checkpoint_still_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli.main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    for name in ("last.pt", "best.pt"):   # as a SIGKILL before the first checkpoint leaves it
        (out / name).unlink()
    capsys.readouterr()
    assert train_cli.main(["--out", str(out), "--resume"]) == 0
    assert "holds no last.pt yet; starting the run from epoch 1" in capsys.readouterr().err
    assert (out / "last.pt").exists()
