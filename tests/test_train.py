"""Training (``robustmaxup.train``) and ``robustmaxup train``: learning, resume, run-directory
contents, one-line errors that leave nothing behind."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from robustmaxup.cli import main as cli_main
from robustmaxup.cli.train import build_parser, config_from_args
from robustmaxup.errors import UserError
from robustmaxup.train import PerturbationSpec, TrainConfig, loop, setup, train
from robustmaxup.train.checkpointing import read_metrics

from tests.fakes import KilledAt


def _cfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", arch="digits_cnn", method="gaussian", method_args={"sigma": 0.25},
                epochs=3, batch=64, lr=0.05, lr_step=2, out=str(out), quiet=True, max_eval=360)
    base.update(kw)
    return TrainConfig(**base)


def test_digits_training_beats_chance_by_far(tmp_path):
    summary = train(_cfg(tmp_path / "run", epochs=5, lr_step=4))
    assert summary["metrics"]["test"] > 0.6, summary["metrics"]  # chance is 0.1
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3, 4, 5]
    assert lines[-1]["loss"] < lines[0]["loss"]
    for key in ("loss", "train_acc", "val", "test", "img_per_s", "lr"):
        assert key in lines[0]
    assert summary["history"] == lines


def test_run_directory_describes_itself(tmp_path):
    train(_cfg(tmp_path / "run", epochs=1, method="maxup", method_args={"sigma": 0.25, "copies": 2}))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    flags = {a.dest for a in build_parser()._actions}
    assert set(config) - {"provenance", "recipe_overrides", "sessions"} <= flags, "config keys must match CLI flag names"
    assert config["copies"] == 2 and config["data_augment"] is True and config["augment"] == "gaussian"
    assert config["score_batch"] == 0 and config["recipe"] is None and config["recipe_overrides"] == {}
    assert "git_dirty" in config["provenance"]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["hparams"] == {"sigma": 0.25, "copies": 2, "augment": "gaussian", "mix_alpha": None, "k": None,
                               "score_batch": 0}
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "digits_cnn" and ckpt["method"] == "maxup"
    assert "scaler" not in ckpt and len(ckpt["history"]) == 1
    assert ckpt["config"] == {k: v for k, v in config.items()
                              if k not in ("provenance", "recipe_overrides", "sessions")}
    assert ckpt["sessions"] == config["sessions"] == [
        {"from_epoch": 0, "epochs": 1, "device": "auto", "workers": 4, "provenance": config["provenance"]}]
    best = torch.load(run / "best.pt", weights_only=True)
    assert "held-out training images" in best["selection"] and best["best"]["epoch"] == 1


RESUMABLE = {
    "maxup": dict(method="maxup", method_args={"sigma": 0.25, "copies": 2}),
    "smoothadv (eps warm-up, 2 steps per batch)": dict(method="smoothadv",
                                                       method_args={"copies": 2, "attack_steps": 1, "warmup": 3}),
    "trades + awp (warm-up)": dict(method="trades", method_args={"attack_steps": 1},
                                   perturbation=PerturbationSpec("awp", {"gamma": 0.005, "warmup": 1})),
    "kmixup": dict(method="kmixup", method_args={"k": 8}),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch, name):
    cfg = dict(RESUMABLE[name], epochs=3, max_eval=60, max_train=400)
    train(_cfg(tmp_path / "full", **cfg))

    killed = KilledAt(monkeypatch, loop, "train_epoch", at=3)  # dies in epoch 3, after its last.pt of 2
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "cut", **cfg))
    killed.disarm()
    train(_cfg(tmp_path / "cut", resume=True, **cfg))

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_resume_rewrites_a_lost_metrics_line_from_the_checkpoint(tmp_path):
    """A kill between writing last.pt and the metrics log must not lose an epoch's line."""
    out = tmp_path / "run"
    train(_cfg(out, epochs=2, max_train=300, max_eval=60))
    log = out / "metrics.jsonl"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + "\n")  # the line of epoch 2 was never written
    train(_cfg(out, epochs=3, max_train=300, max_eval=60, resume=True))
    history = torch.load(out / "last.pt", weights_only=True)["history"]
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]
    assert read_metrics(out) == history
    assert json.loads(lines[1]) == history[1]


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    train(_cfg(tmp_path / "run", epochs=1))
    capsys.readouterr()  # only the CLI call's stderr is under test (the library call may log)
    code = cli_main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--sigma", "0.5",
                     "--epochs", "2", "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "other settings" in err and "sigma (0.25, now 0.5)" in err, err
    assert len(err.strip().splitlines()) == 1 and "epochs" not in err  # epochs may change



def test_resume_refuses_fewer_epochs_than_done(tmp_path, capsys):
    train(_cfg(tmp_path / "run", epochs=2))
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    code = cli_main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1",
                     "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "2 epochs done, more than the 1 asked for" in err, err
    assert len(err.strip().splitlines()) == 1 and (tmp_path / "run" / "last.pt").read_bytes() == before


ERRORS = [
    (["--sigma", "-1"], "--sigma"),
    (["--method", "maxup", "--copies", "0"], "--copies"),
    (["--arch", "resnet9000"], "digits_cnn"),
    (["--method", "magic"], "maxup"),
    (["--method", "gaussian", "--copies", "4"], "--copies is not an option of method gaussian (its options: --sigma)"),
    (["--method", "maxup", "--m", "4"], "--m was renamed --copies"),
    (["--method", "smoothadv", "--m-train", "4"], "--m-train was renamed --copies"),
    (["--method", "smoothadv", "--attack-eps", "0.5"], "--smoothadv-eps"),
    (["--method", "consistency", "--eta", "0.5"], "--eta was renamed --smoothmix-eta or --consistency-eta"),
    (["--method", "macer", "--beta", "4"], "--beta was renamed --trades-beta or --macer-beta"),
    (["--awp", "0.01"], "--awp was renamed --awp-gamma"),
    (["--amp", "0.5"], "--amp was renamed --amp-eps"),
    (["--method", "maxup", "--mix-alpha", "0.01"], "--mix-alpha is not used by the gaussian augmentation"),
    (["--method", "mixup", "--alpha", "0.01"], "--alpha was renamed --mix-alpha"),
    (["--recipe", "nonesuch"], "--recipe"),
    (["--method", "smoothadv", "--copies", "8", "--batch", "4", "--max-train", "200"], "--batch"),
    (["--lr-milestones", "5", "3"], "--lr-milestones"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-0.1"], "--lr"),
    (["--sigma", "abc"], "--sigma"),
    (["--lr-gamma", "nan"], "--lr-gamma"),
    (["--lr-gamma", "0"], "--lr-gamma"),
    (["--max-eval", "-1"], "--max-eval"),
    (["--workers", "-1"], "--workers"),
    (["--max-train", "-5"], "--max-train"),
    (["--val-size", "-2"], "--val-size"),
    (["--batch", "5000"], "--batch"),  # larger than the training split: no step would be taken
    (["--batch", "300", "--max-train", "320"], "--batch"),  # 288 images remain after the hold-out
    (["--config", "nowhere.json"], "--config"),
    (["--method", "maxup", "--score-batch", "-1"], "--score-batch"),
    (["--lr", "1e308"], "--lr"),                          # beyond float32: the optimiser would crash
    (["--weight-decay", "1e39"], "--weight-decay"),
    (["--schedule", "multistep"], "--lr-milestones"),     # multistep without a milestone
    (["--method", "pgd_at", "--eval-radius", "0.25"], "--eval-radius applies to smoothing methods"),
    (["--eval-radius", "0.25", "--eval-n", "39"], "--eval-n is 39: too few"),  # 40 is the least
    (["--eval-radius", "-0.1"], "--eval-radius"),
    (["--eval-radius", "9"], "--eval-radius is too large"),
    (["--eval-radius", "0.25", "--eval-alpha", "0"], "--eval-alpha"),
    (["--eval-n", "0"], "--eval-n"),
    (["--eval-n", "200"], "--eval-n applies only with --eval-radius"),
    (["--eval-radius", "1.75"], "--eval-radius is too large"),   # r/sigma = 7 needs ~5e12 copies
    (["--crop-padding", "mirror"], "--crop-padding"),
    (["--schedule", "cosine", "--lr-step", "5"], "--lr-step applies to --schedule step; this run's schedule is cosine"),
    (["--lr-milestones", "2"], "--lr-milestones applies to --schedule multistep; this run's schedule is step"),
    (["--schedule", "piecewise", "--lr-gamma", "0.5"], "--lr-gamma applies to --schedule step or multistep"),
    (["--nesterov", "--momentum", "0"], "--nesterov needs a momentum > 0"),
    (["--eval-radius", "0.25", "--val-size", "0", "--max-eval", "0"], "--eval-radius has nothing to evaluate"),
    (["--out", ""], "--out is empty"),
    (["--workers", "8"], "--workers applies to datasets read from disk (imagenet); digits is held in memory"),
    (["--cache-dir", "somewhere"], "--cache-dir is not used by digits (bundled with the code)"),
    (["--data-root", "somewhere"], "--data-root is not used by digits (bundled with the code)"),
    (["--dataset", "imagenet", "--crop-padding", "reflect"],
     "--crop-padding applies to the padded random crop of training images; there is none for imagenet"),
    (["--no-data-augment", "--crop-padding", "grey"], "there is none with --no-data-augment"),
]


@pytest.mark.parametrize("extra, needle", ERRORS)
def test_bad_input_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys, extra, needle):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1", "--out", str(out), "--quiet"]
    code = cli_main(argv + extra)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()


def test_library_errors_name_the_field_before_anything_runs(tmp_path):
    from robustmaxup.runtime.checks import FieldError

    for field, value in [("lr_gamma", float("nan")), ("max_eval", -1), ("workers", -1), ("max_train", -1)]:
        with pytest.raises(FieldError) as e:
            train(_cfg(tmp_path / "run", **{field: value}))
        assert e.value.field == field
    with pytest.raises(FieldError) as e:
        train(_cfg(tmp_path / "run", batch=2000))
    assert e.value.field == "batch"
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_and_missing_root(tmp_path, capsys):
    for argv, needle in [
        (["--dataset", "mnist"], "cifar10"),
        (["--dataset", "cifar10", "--data-root", str(tmp_path / "nowhere")], "nowhere"),
    ]:
        code = cli_main(["train", *argv, "--out", str(tmp_path / "run"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "run").exists()


def test_non_empty_run_dir_needs_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code = cli_main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--out", str(out), "--quiet"])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.cuda
def test_cuda_bf16_training_learns(tmp_path):
    summary = train(_cfg(tmp_path / "run", epochs=4, lr_step=3, device="cuda", precision="auto",
                         method="maxup", method_args={"sigma": 0.25, "copies": 4}))
    assert summary["metrics"]["test"] > 0.6
    from robustmaxup.checkpoints import load_model

    model, meta = load_model(tmp_path / "run" / "last.pt", device="cpu")  # a GPU run loads on a CPU
    assert meta["hparams"]["copies"] == 4 and next(model.parameters()).device.type == "cpu"


def test_subsets_cover_classes_of_a_class_sorted_split():
    from robustmaxup.data import spread_indices

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as ImageFolder data is
    idx = spread_indices(len(labels), 50)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    assert torch.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert spread_indices(7, 100).tolist() == list(range(7))


def test_max_train_takes_a_random_subset(tmp_path):
    run = setup(_cfg(tmp_path / "run", max_train=200, val_size=0))
    labels = run.splits["train"].labels
    assert len(labels) == 200 and len(torch.unique(labels)) == 10


def test_weight_perturbation_flags(tmp_path, capsys):
    parser = build_parser()
    base = ["--dataset", "digits", "--out", str(tmp_path / "r")]
    cfg = config_from_args(parser.parse_args(base + ["--method", "pgd_at", "--awp-gamma", "0.01", "--awp-warmup", "2"]))
    assert cfg.perturbation == PerturbationSpec("awp", {"gamma": 0.01, "warmup": 2})
    assert cfg.flat()["awp_gamma"] == 0.01 and cfg.flat()["awp_warmup"] == 2
    assert cfg.perturbation.args["restore_after_step"] is True
    for extra, needle in [(["--awp-gamma", "0.01", "--amp-eps", "0.5"], "one weight perturbation"),
                          (["--amp-steps", "3"], "--amp-* options need --amp-eps itself")]:
        code = cli_main(["train", *base, "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_config_json_names_perturbation_arguments_by_field(tmp_path):
    """Arguments given in any order land under their own names (the first one is not "awp")."""
    train(_cfg(tmp_path / "run", epochs=1, max_train=200, max_eval=60,
               perturbation=PerturbationSpec("awp", {"warmup": 2, "gamma": 0.005})))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["awp_gamma"] == 0.005 and config["awp_warmup"] == 2 and "awp" not in config


def test_config_replay_gives_the_same_config_and_explicit_flags_win(tmp_path):
    first = tmp_path / "first"
    code = cli_main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--method", "maxup", "--copies", "2",
                     "--epochs", "1", "--batch", "32", "--lr", "0.05", "--max-train", "200", "--max-eval", "60",
                     "--awp-gamma", "0.01", "--awp-warmup", "1", "--out", str(first), "--quiet"])
    assert code == 0
    code = cli_main(["train", "--config", str(first / "config.json"), "--out", str(tmp_path / "again")])
    assert code == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, tmp_path / "again"))
    for d in (a, b):
        d.pop("provenance"), d.pop("out"), d.pop("sessions")  # when and where each ran
    assert a.pop("quiet") is True and b.pop("quiet") is False     # a display preference is not replayed
    assert a == b

    parser = build_parser()
    replay = ["--config", str(first / "config.json")]
    cfg = config_from_args(parser.parse_args(replay + ["--lr", "0.1", "--awp-warmup", "0"]))
    assert cfg.lr == 0.1 and cfg.perturbation.args == {"gamma": 0.01, "warmup": 0, "restore_after_step": True}
    assert cfg.batch == 32 and cfg.method_args["copies"] == 2 and cfg.out == str(first)
    cfg = config_from_args(parser.parse_args(replay + ["--method", "gaussian", "--amp-eps", "0.5"]))
    assert cfg.method_args == {"sigma": 0.25} and cfg.perturbation.name == "amp"  # maxup's copies, awp dropped
    assert config_from_args(parser.parse_args(replay + ["--resume"])).resume
    assert not config_from_args(parser.parse_args(replay)).resume


def test_awp_run_steps_the_optimizer_at_the_perturbed_weights(tmp_path):
    """The engine follows AWP's reference order (perturb, gradient, step, restore): at the
    optimiser step the weights are w + v (with the former order, or restore_after_step=False,
    they are w)."""
    run = setup(_cfg(tmp_path / "run", epochs=1, max_train=200, max_eval=0, val_size=0, method="gaussian",
                     perturbation=PerturbationSpec("awp", {"gamma": 0.05})))
    x, y = next(iter(run.loaders["train"]))
    at_step: dict[str, torch.Tensor] = {}
    step = run.optimizer.step

    def recording_step(*a, **k):
        at_step.update({n: p.detach().clone() for n, p in run.model.named_parameters()})
        return step(*a, **k)

    run.optimizer.step = recording_step
    for restore_after_step in (True, False):
        run.perturbation.restore_after_step = restore_after_step
        before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
        loop.train_step(run, x, y)
        weights = [n for n, p in run.model.named_parameters() if p.dim() > 1]
        moved = [n for n in weights if not torch.equal(at_step[n], before[n])]
        assert (len(moved) == len(weights)) if restore_after_step else not moved, (restore_after_step, moved)
        biases = [n for n, p in run.model.named_parameters() if p.dim() <= 1]
        assert all(torch.equal(at_step[n], before[n]) for n in biases)   # AWP leaves them alone


@pytest.mark.parametrize("pre_existing", [False, True])
def test_divergence_before_a_checkpoint_leaves_nothing(tmp_path, capsys, pre_existing):
    """A run that fails before its first checkpoint removes what it wrote (config.json,
    metrics.jsonl, the directory it made), so the same command can be rerun as it is."""
    out = tmp_path / "run"
    if pre_existing:
        out.mkdir()
    argv = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1", "--batch", "64",
            "--lr", "1e10", "--out", str(out), "--quiet"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "diverged at epoch 1" in err and "--lr" in err, err
    assert (out.is_dir() and not any(out.iterdir())) if pre_existing else not out.exists()


def _train_until(point: str, out, tmp_path, epochs: int) -> subprocess.Popen:
    """A ``train`` subprocess paused at fault point ``point`` (robustmaxup.runtime.faults)."""
    from robustmaxup.runtime.faults import PAUSE_ENV

    flag = tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: f"{point}={flag}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustmaxup", "train", "--dataset", "digits",
                             "--arch", "digits_cnn", "--epochs", str(epochs), "--batch", "64",
                             "--max-train", "256", "--out", str(out), "--quiet"],
                            env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), proc.communicate()[1]
    return proc


@pytest.mark.parametrize("point, kept", [("train.config", False), ("train.metrics", True)])
def test_sigterm_ends_a_run_cleanly(tmp_path, point, kept):
    """SIGTERM (timeout, Slurm, kill) interrupts like Ctrl-C: exit 143, one line, the lock file
    removed; before the first checkpoint the run leaves nothing, after it --resume continues."""
    import signal

    from robustmaxup.train.state import LOCK_FILE

    out = tmp_path / "run"
    proc = _train_until(point, out, tmp_path, epochs=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines() == ["robustmaxup train: terminated (SIGTERM)"], err
    if not kept:
        assert not out.exists()
        return
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "last.pt", "metrics.jsonl"]
    assert not (out / LOCK_FILE).exists()
    resume = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "2", "--batch", "64",
              "--max-train", "256", "--out", str(out), "--quiet", "--resume"]
    assert cli_main(resume) == 0 and len(read_metrics(out)) == 2


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
def _small(out, **kw) -> TrainConfig:
    return _cfg(out, **{"max_eval": 30, "max_train": 200, **kw})


def test_best_pt_is_the_best_validation_epoch_and_last_pt_every_epoch(tmp_path, monkeypatch):
    # kills M23 (min), M24 (always the latest), M26 (chosen on test), M27 (last.pt only on improvement)
    scores = {"val": [0.5, 0.9, 0.7], "test": [0.9, 0.1, 0.8]}
    monkeypatch.setattr(loop, "evaluate", lambda run, name: scores[name][run.state.epoch])
    train(_small(tmp_path / "run"))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best"]["epoch"] == 2 and best["best"]["value"] == 0.9
    assert last["epoch"] == 3 and last["best"] == best["best"]


def test_optimizer_uses_the_configured_momentum_and_weight_decay(tmp_path):  # kills M21, M22
    run = setup(_small(tmp_path / "run", momentum=0.8, weight_decay=3e-4))
    try:
        g = run.optimizer.param_groups[0]
        assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.8, 3e-4, False)
    finally:
        run.lock.release()
        run.dist.close()


def test_each_epoch_trains_at_its_scheduled_lr(tmp_path):  # kills M15
    run = setup(_small(tmp_path / "run", lr=0.05, lr_step=2))
    try:
        seen = []
        for epoch in range(3):
            loop.train_epoch(run, epoch)
            seen.append(run.optimizer.param_groups[0]["lr"])
        assert seen == pytest.approx([0.05, 0.05, 0.005])
    finally:
        run.lock.release()
        run.dist.close()


@pytest.mark.parametrize("change", [{"weight_decay": 5e-4}, {"lr": 0.1}, {"momentum": 0.5}])
def test_resume_refuses_a_changed_optimiser_setting(tmp_path, change):  # kills M28, M34
    train(_small(tmp_path / "run", epochs=1))
    with pytest.raises(UserError, match="other settings"):
        train(_small(tmp_path / "run", epochs=2, resume=True, **change))


def test_resume_restores_the_global_rng_state(tmp_path, monkeypatch):  # kills M19
    real = loop.train_epoch

    def drawing(run, epoch, progress=False):
        torch.rand(7)  # a global-RNG draw during training, as a model with dropout would make
        return real(run, epoch, progress)

    monkeypatch.setattr(loop, "train_epoch", drawing)
    train(_small(tmp_path / "run", epochs=1))
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["rng"]["torch"]
    run = setup(_small(tmp_path / "run", epochs=2, resume=True))
    try:
        assert torch.equal(torch.get_rng_state(), saved)
    finally:
        run.lock.release()
        run.dist.close()


def test_evaluation_does_not_consume_the_training_noise_stream(tmp_path):  # kills M36
    run = setup(_small(tmp_path / "run"))
    try:
        before = run.state.generator.get_state()
        first = loop.evaluate(run, "val")
        assert torch.equal(run.state.generator.get_state(), before)
        assert loop.evaluate(run, "val") == first  # a fixed eval.val stream: comparable across epochs
    finally:
        run.lock.release()
        run.dist.close()


def test_without_validation_images_the_log_says_best_pt_is_not_written(tmp_path, caplog):
    """``--val-size 0`` used to show only ``val nan``; now one line says what it means and the
    epoch line shows ``val -``."""
    import logging

    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        train(_cfg(tmp_path / "run", epochs=1, max_train=200, val_size=0, quiet=False))
    text = caplog.text
    assert "no validation images (val_size 0): best.pt is not written; use last.pt" in text
    assert "val -  test 0." in text and "nan" not in text
    assert not (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("padding", ["zeros", "reflect", "grey"])
def test_crop_padding_reaches_the_training_loader(tmp_path, padding):
    from robustmaxup.data import CropFlip
    from robustmaxup.train.state import train_augmentation

    run = setup(_cfg(tmp_path / padding, epochs=1, max_train=200, val_size=0, crop_padding=padding))
    assert run.loaders["train"].augment == CropFlip(pad=1, flip=False, padding=padding)  # digits' policy
    off = _cfg(tmp_path / "x", crop_padding=padding, data_augment=False)
    if padding == "zeros":
        assert train_augmentation(off) is False
    else:                                             # asked for, but nothing would use it
        with pytest.raises(UserError, match="there is none with data_augment=False"):
            train_augmentation(off)


@pytest.mark.parametrize("recipe, padding", [("pgd_at", "reflect"), ("awp_at", "reflect"), ("amp", "grey"),
                                             ("cohen", "zeros"), ("trades", "zeros")])
def test_recipes_pad_the_crop_as_their_references(recipe, padding):
    cfg = TrainConfig.from_recipe(recipe, dataset="cifar10", out="unused")
    assert cfg.crop_padding == padding


def test_a_run_from_setup_releases_its_directory_when_closed(tmp_path):
    """``setup`` holds the run directory's lock; ``close`` (or ``with``) gives it back, so the
    same process can then train there."""
    cfg = _cfg(tmp_path / "run", epochs=1, max_train=200, val_size=0)
    run = setup(cfg)
    with pytest.raises(UserError, match="in use by another run"):
        setup(cfg)
    run.close()
    run.close()                                   # twice is harmless
    with setup(cfg) as run:
        assert run.state.epoch == 0
    assert train(cfg)["metrics"]["epoch"] == 1


def test_resume_of_a_missing_run_says_it_starts_fresh(tmp_path, caplog):
    """A mistyped --out with --resume used to start a full run without a word."""
    import logging

    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        train(_cfg(tmp_path / "run", epochs=1, max_train=200, val_size=0, resume=True))
    assert "holds no last.pt yet; starting the run from epoch 1" in caplog.text


def test_a_file_that_is_not_a_train_config_is_named_so(tmp_path, capsys):
    """A certify sidecar given to --config used to be read as ~30 unknown method options."""
    sidecar = tmp_path / "c.tsv.json"
    sidecar.write_text(json.dumps({"checkpoint": "x.pt", "n0": 100, "alpha": 0.001, "sigma": 0.25}))
    assert cli_main(["train", "--config", str(sidecar), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "is not a robustmaxup train config.json: it has keys no train option has (checkpoint, n0)" in err
    assert not (tmp_path / "r").exists()


def test_a_recipes_crop_padding_is_left_unused_where_there_is_no_crop(tmp_path):
    """--recipe pgd_at on ImageNet (RandomResizedCrop, no padding) trains; only a padding asked
    for on the command line is refused there."""
    from robustmaxup.train.state import train_augmentation

    cfg = TrainConfig.from_recipe("pgd_at", dataset="imagenet", out=str(tmp_path / "r"))
    assert cfg.crop_padding == "reflect" and train_augmentation(cfg) is True
    cfg = TrainConfig.from_recipe("amp", dataset="digits", out=str(tmp_path / "r"), data_augment=False)
    assert train_augmentation(cfg) is False


def _make_old(run_dir, drop=("crop_padding",), **old) -> None:
    """Rewrite a run directory's records as an earlier robustmaxup wrote them."""
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    for record in (ckpt["config"],):
        for key in drop:
            record.pop(key, None)
        record.update(old)
    torch.save(ckpt, run_dir / "last.pt")
    config = json.loads((run_dir / "config.json").read_text())
    for key in drop:
        config.pop(key, None)
    config.update(old)
    (run_dir / "config.json").write_text(json.dumps(config))


def test_runs_recorded_by_earlier_versions_resume_and_replay(tmp_path):
    """Before this version MaxUp recorded alpha 1.0 and k 16 for Gaussian copies and no run
    recorded crop_padding (zeros was the only one): such runs still resume and replay, as
    themselves."""
    run = tmp_path / "old"
    cfg = _cfg(run, epochs=1, max_train=200, val_size=0, method="maxup", method_args={"copies": 2})
    train(cfg)
    _make_old(run, drop=("crop_padding", "mix_alpha"), alpha=1.0, k=16)   # then named alpha
    assert train(dataclasses.replace(cfg, epochs=2, resume=True))["metrics"]["epoch"] == 2
    replay = config_from_args(build_parser().parse_args(["--config", str(run / "config.json"),
                                                         "--out", str(tmp_path / "again")]))
    assert replay.crop_padding == "zeros" and replay.method_args.get("mix_alpha") is None


def test_an_earlier_zero_padded_run_is_not_silently_resumed_with_reflection(tmp_path, capsys):
    """pgd_at's recipe pads by reflection now; a run made before (zeros) is refused on resume
    with the difference named, not continued with another augmentation."""
    run = tmp_path / "old"
    base = ["train", "--recipe", "pgd_at", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1",
            "--max-train", "128", "--batch", "64", "--max-eval", "20", "--val-size", "0", "--out", str(run),
            "--quiet"]
    assert cli_main(base) == 0
    _make_old(run)
    capsys.readouterr()
    assert cli_main([*base[:base.index("--epochs") + 1], "2", *base[base.index("--epochs") + 2:], "--resume"]) == 2
    assert "--crop-padding ('zeros', now 'reflect')" in capsys.readouterr().err
