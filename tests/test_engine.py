"""The training engine and ``robustmaxup train``: learning, resume, run-directory contents,
one-line errors that leave nothing behind."""

from __future__ import annotations

import json

import pytest
import torch

from robustmaxup import engine
from robustmaxup.cli import main as cli_main
from robustmaxup.cli.train import build_parser
from robustmaxup.engine import TrainConfig, train


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


def test_run_directory_describes_itself(tmp_path):
    train(_cfg(tmp_path / "run", epochs=1, method="maxup", method_args={"sigma": 0.25, "m": 2}))
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    flags = {a.dest for a in build_parser()._actions}
    names = {d.split("__", 1)[-1] for d in flags}
    assert set(config) - {"provenance"} <= names, "config keys must match CLI flag names"
    assert config["m"] == 2 and config["data_augment"] is True and config["augment"] == "gaussian" and config["score_batch"] == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["hparams"] == {"sigma": 0.25, "m": 2, "augment": "gaussian", "alpha": 1.0, "k": 16, "score_batch": 0}
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "digits_cnn" and ckpt["method"] == "maxup"
    best = torch.load(run / "best.pt", weights_only=True)
    assert "held-out training images" in best["selection"] and best["best"]["epoch"] == 1


RESUMABLE = {
    "maxup": dict(method="maxup", method_args={"sigma": 0.25, "m": 2}),
    "smoothadv (eps warm-up)": dict(method="smoothadv", method_args={"m_train": 2, "attack_steps": 1, "warmup": 3}),
    "trades + awp (warm-up)": dict(method="trades", method_args={"attack_steps": 1},
                                   perturbation="awp", perturbation_args={"gamma": 0.005, "warmup": 1}),
    "kmixup": dict(method="kmixup", method_args={"k": 8}),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch, name):
    cfg = dict(RESUMABLE[name], epochs=3, max_eval=60, max_train=400)
    train(_cfg(tmp_path / "full", **cfg))

    real_log = engine._log_epoch

    def killed_after_epoch_2(run, m):
        real_log(run, m)
        if m["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies after last.pt of epoch 2 is written

    monkeypatch.setattr(engine, "_log_epoch", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "cut", **cfg))
    monkeypatch.setattr(engine, "_log_epoch", real_log)
    train(_cfg(tmp_path / "cut", resume=True, **cfg))

    full = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2, 3]


def test_resume_refuses_a_changed_config(tmp_path, capsys):
    train(_cfg(tmp_path / "run", epochs=1))
    code = cli_main(["train", "--dataset", "digits", "--arch", "digits_cnn", "--sigma", "0.5",
                     "--epochs", "2", "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    assert code == 2 and "different config" in capsys.readouterr().err


ERRORS = [
    (["--sigma", "-1"], "--sigma"),
    (["--method", "maxup", "--m", "0"], "--m"),
    (["--arch", "resnet9000"], "digits_cnn"),
    (["--method", "magic"], "maxup"),
    (["--method", "gaussian", "--m", "4"], "does not take --m"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-0.1"], "--lr"),
    (["--sigma", "abc"], "--sigma"),
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
                         method="maxup", method_args={"sigma": 0.25, "m": 4}))
    assert summary["metrics"]["test"] > 0.6
    from robustmaxup.checkpoints import load_model

    model, meta = load_model(tmp_path / "run" / "last.pt", device="cpu")  # a GPU run loads on a CPU
    assert meta["hparams"]["m"] == 4 and next(model.parameters()).device.type == "cpu"


def test_subsets_cover_classes_of_a_class_sorted_split():
    from robustmaxup.data import spread_indices

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as ImageFolder data is
    idx = spread_indices(len(labels), 50)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50
    assert torch.bincount(labels[idx], minlength=10).tolist() == [5] * 10
    assert spread_indices(7, 100).tolist() == list(range(7))


def test_max_train_takes_a_random_subset(tmp_path):
    run = engine.setup(_cfg(tmp_path / "run", max_train=200, val_size=0))
    labels = run.splits["train"].labels
    assert len(labels) == 200 and len(torch.unique(labels)) == 10


def test_weight_perturbation_flags(tmp_path, capsys):
    from robustmaxup.cli.train import config_from_args

    parser = build_parser()
    base = ["--dataset", "digits", "--out", str(tmp_path / "r")]
    cfg = config_from_args(parser.parse_args(base + ["--method", "pgd_at", "--awp", "0.01", "--awp-warmup", "2"]))
    assert cfg.perturbation == "awp" and cfg.perturbation_args == {"gamma": 0.01, "warmup": 2}
    assert cfg.flat()["awp"] == 0.01 and cfg.flat()["awp_warmup"] == 2
    for extra, needle in [(["--awp", "0.01", "--amp", "0.5"], "one weight perturbation"),
                          (["--amp-steps", "3"], "need --amp itself")]:
        code = cli_main(["train", *base, "--quiet", *extra])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
