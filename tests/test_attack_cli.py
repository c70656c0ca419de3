"""``robustmaxup attack``: error paths, a tiny end-to-end run on digits, resume equality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from robustmaxup.checkpoints import build_model_for, save_checkpoint
from robustmaxup.cli.attack import main

from tests.fakes import KilledAt


def _trained_digits_model() -> nn.Module:
    from robustmaxup.data import load_split

    torch.manual_seed(0)
    split = load_split("digits", "train")
    x, y = split.batch(list(range(len(split))))
    model = build_model_for("digits_cnn", "digits")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    save_checkpoint(path, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                           "model": _trained_digits_model().state_dict(), "method": "gaussian",
                           "hparams": {"sigma": 0.25}, "epoch": 3})
    return path


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _fail(args: list[str], capsys, word: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert word in err, err


def test_errors_are_one_line_exit_2_and_write_nothing(ckpt, tmp_path, capsys):
    out = str(tmp_path / "r.json")
    base = [str(ckpt), "--dataset", "digits", "--out", out, "--quiet"]
    cases = [
        (["--eps", "0"], "--eps"), (["--eps", "-1/255"], "--eps"), (["--eps", "2"], "--eps"),
        (["--eps", "9", "--norm", "L2"], "--eps"), (["--eps", "abc"], "number"),
        (["--eps", "0.1", "--norm", "L3"], "norm"), (["--eps", "0.1", "--attack", "cw"], "attack"),
        (["--eps", "0.1", "--aa-version", "fast"], "--aa-version"),
        (["--eps", "0.1", "--attacks", "apgd-ce", "pgd"], "pgd"),
        (["--eps", "0.1", "--attack", "pgd", "--norm", "L1"], "norm"),
        (["--eps", "0.1", "--attack", "pgd", "--aa-version", "rand"], "--aa-version"),
        (["--eps", "0.1", "--version", "rand"], "--version was renamed --aa-version"),
        (["--eps", "0.1", "--steps", "50"], "--steps/--step-size apply to --attack pgd"),
        (["--eps", "0.1", "--step-size", "1/255"], "--steps/--step-size apply to --attack pgd"),
        (["--eps", "0.1", "--n-examples", "0"], "--n-examples"),
        (["--eps", "0.1", "--smoothed", "--sigma", "-0.5"], "--sigma"),
        (["--eps", "0.1", "--sigma", "0.5"], "--smoothed"),
        # library FieldErrors come out under the flag's name
        (["--eps", "0.1", "--batch", "0"], "--batch must be"),
        (["--eps", "0.1", "--attack", "pgd", "--step-size", "0"], "--step-size must be"),
        (["--eps", "0.1", "--rescores", "0"], "--rescores must be"),
        (["--eps", "0.1", "--smoothed", "--copies", "0"], "--copies must be"),
        (["--eps", "0.1", "--smoothed", "--m", "4"], "--m was renamed --copies"),
        (["--eps", "0.1", "--attack", "pgd", "--steps", "0"], "--steps must be"),
        (["--eps", "0.1", "--attack", "cw"], "--attack must be"),
    ]
    for extra, word in cases:
        _fail(base + extra, capsys, word)
    _fail([str(tmp_path / "missing.pt"), "--dataset", "digits", "--eps", "0.1", "--out", out],
          capsys, "does not exist")
    _fail([str(ckpt), "--dataset", "cifar10", "--eps", "0.1", "--out", out], capsys, "digits")
    c10 = tmp_path / "c10.pt"
    save_checkpoint(c10, {"arch": "cifar_resnet20", "dataset": "cifar10", "num_classes": 10,
                          "model": build_model_for("cifar_resnet20", "cifar10").state_dict()})
    _fail([str(c10), "--dataset", "cifar10", "--data-root", str(tmp_path / "nope"), "--eps", "0.1",
           "--out", out], capsys, "nope")
    assert _files(tmp_path) == {"c10.pt"}
    (tmp_path / "r.json").write_text("{}")
    _fail(base + ["--eps", "0.1"], capsys, "already exists")
    assert _files(tmp_path) == {"c10.pt", "r.json"}


def _short_autoattack(monkeypatch) -> None:
    """AutoAttack with 10 iterations and one restart (the CLI path is unchanged)."""
    from robustmaxup.attacks import run_autoattack

    def configure(adversary):
        adversary.apgd.n_iter, adversary.apgd.n_restarts = 10, 1

    monkeypatch.setattr("robustmaxup.attacks.evaluation.run_autoattack",
                        lambda *a, **kw: run_autoattack(*a, **kw, configure=configure))


def test_end_to_end_autoattack_on_digits(ckpt, tmp_path, capsys, monkeypatch):
    _short_autoattack(monkeypatch)
    out, adv = tmp_path / "aa.json", tmp_path / "adv.pt"
    (tmp_path / "aa.autoattack.log").write_text("a stopped run's line\n")   # appended to, never truncated
    rc = main([str(ckpt), "--dataset", "digits", "--eps", "8/255", "--attacks", "apgd-ce",
               "--n-examples", "20", "--batch", "8", "--out", str(out), "--save-adv", str(adv)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "clean accuracy" in err and "robust accuracy" in err
    assert "running apgd-ce" not in err  # pyautoattack's debug log goes to the file only
    res = json.loads(out.read_text())
    assert res["n"] == 20 and res["version"] == "custom" and res["attacks"] == ["apgd-ce"]
    used = res["attack_config"]      # as used: rescores resolved, PGD's fields unset
    assert used["rescores"] == 1 and used["steps"] is None and used["step_size"] is None
    assert abs(res["eps"] - 8 / 255) < 1e-12 and res["norm"] == "Linf"
    assert res["robust_accuracy"] <= res["clean_accuracy"]
    assert res["clean_accuracy"] > 0.8
    assert res["provenance"]["torch"] == torch.__version__
    assert (tmp_path / "aa.autoattack.log").read_text().count("apgd-ce") >= 3
    log_lines = (tmp_path / "aa.autoattack.log").read_text().splitlines()
    assert log_lines[0] == "a stopped run's line"
    assert log_lines[1].startswith("=== robustmaxup attack: run started") and "0 of 3 chunks" in log_lines[1]
    rows = (tmp_path / "aa.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["idx", "label", "clean_correct", "robust_correct",
                                   "robust_after_apgd-ce", "rescore_correct"]
    flags = torch.tensor([int(r.split("\t")[3]) for r in rows[1:]])
    assert len(flags) == 20 and flags.float().mean().item() == pytest.approx(res["robust_accuracy"])
    saved = torch.load(adv, weights_only=True)
    from robustmaxup.checkpoints import load_model
    from robustmaxup.data import load_split

    expected_idx = [i * 360 // 20 for i in range(20)]  # evenly spaced over the 360 test images
    assert [int(r.split("\t")[0]) for r in rows[1:]] == expected_idx == res["indices"]
    assert saved["indices"].tolist() == expected_idx
    x, y = load_split("digits", "test").batch(expected_idx)
    assert torch.equal(saved["labels"], y)
    assert (saved["x_adv"] - x).abs().max() <= 8 / 255 + 1e-6
    model, _ = load_model(ckpt, dataset="digits")
    with torch.no_grad():
        rescored = model(saved["x_adv"]).argmax(1) == y
    assert torch.equal(rescored, flags.bool())
    assert not (tmp_path / "aa.json.state.pt").exists()
    assert main([str(ckpt), "--dataset", "digits", "--eps", "8/255", "--attacks", "apgd-ce",
                 "--n-examples", "20", "--batch", "8", "--out", str(out), "--save-adv", str(adv),
                 "--resume"]) == 0
    assert "aa.json is complete (20 examples); nothing to do" in capsys.readouterr().err
    (tmp_path / "aa.tsv").unlink()                      # a finished run that lost a file is not "complete"
    assert main([str(ckpt), "--dataset", "digits", "--eps", "8/255", "--attacks", "apgd-ce",
                 "--n-examples", "20", "--batch", "8", "--out", str(out), "--save-adv", str(adv),
                 "--resume"]) == 2
    assert "aa.tsv is missing" in capsys.readouterr().err


def test_resume_equals_uninterrupted_run(ckpt, tmp_path, capsys, monkeypatch):
    import robustmaxup.attacks.runner as runner

    args = [str(ckpt), "--dataset", "digits", "--attack", "pgd", "--norm", "L2", "--eps", "0.5",
            "--steps", "3", "--smoothed", "--copies", "4", "--n-examples", "24", "--batch", "8",
            "--quiet", "--seed", "3"]
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert main(args + ["--out", str(full), "--save-adv", str(tmp_path / "full.pt")]) == 0

    killed = KilledAt(monkeypatch, runner, "_run_chunk", at=2)
    assert main(args + ["--out", str(part), "--save-adv", str(tmp_path / "part.pt")]) == 130
    assert not part.exists() and (tmp_path / "part.json.state.pt").exists()
    killed.disarm()
    capsys.readouterr()
    _fail(args[:-2] + ["--seed", "4", "--out", str(part), "--resume"], capsys, "seed")
    assert main(args + ["--out", str(part), "--save-adv", str(tmp_path / "part.pt"), "--resume"]) == 0
    a, b = json.loads(full.read_text()), json.loads(part.read_text())
    for key in ("clean_accuracy", "robust_accuracy", "robust_accuracy_after", "rescoring"):
        assert a[key] == b[key], key
    assert a["randomized"] and a["rescoring"]["repeats"] == 5
    assert (tmp_path / "full.tsv").read_text() == (tmp_path / "part.tsv").read_text()
    xa = torch.load(tmp_path / "full.pt", weights_only=True)["x_adv"]
    xb = torch.load(tmp_path / "part.pt", weights_only=True)["x_adv"]
    assert torch.equal(xa, xb)
    assert not (tmp_path / "part.json.state.pt").exists()
