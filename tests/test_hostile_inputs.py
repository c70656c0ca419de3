"""Hostile and clumsy input to every subcommand: the promise is ONE stderr line, exit status 2,
no traceback, no raw control character on the terminal, and no file created, changed or
removed (the fixture folder and the working folder are snapshotted before and after: paths,
kinds, sizes, mtimes and bytes).

Each case is ``(id, argv template, setup, needle)``: ``{name}`` in the argv is a fixture path
(see :func:`fx`) or ``{d}``, the case's own working folder; ``setup(d, fx)`` may create files
there before the snapshot; ``needle`` must appear in the error line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch

from robustmaxup.checkpoints import build_model_for, save_checkpoint
from robustmaxup.cli import main
from robustmaxup.runtime import limits

LONG = "x" * 300  # longer than any file system's NAME_MAX
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n"] + ["\x7f", "\x9b"]


# ----------------------------------------------------------------------------- fixtures
def _ckpt_dict(net, **over):
    d = {"format": "robustmaxup/1", "arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
         "in_channels": 1, "mean": [0.3053], "std": [0.3760], "model": net.state_dict(),
         "method": "gaussian", "hparams": {"sigma": 0.25}, "epoch": 1}
    d.update(over)
    return {k: v for k, v in d.items() if v is not _DROP}


_DROP = object()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/robustmaxup-pwned",))


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Shared inputs, built once: good and hostile checkpoints, certify/predict TSVs, odd files."""
    root = tmp_path_factory.mktemp("fx")
    torch.manual_seed(0)
    model = build_model_for("digits_cnn", "digits").eval()
    paths = {"root": str(root)}

    def ck(name, **over):
        path = root / name
        torch.save(_ckpt_dict(model, **over), path)
        paths[name.split(".")[0]] = str(path)

    save_checkpoint(root / "ck.pt", {k: v for k, v in _ckpt_dict(model).items() if k != "format"})
    paths["ck"] = str(root / "ck.pt")
    ck("inch.pt", in_channels=10**8, mean=[0.5] * 4, std=[0.5] * 4)
    ck("inch0.pt", in_channels=0)
    ck("arch.pt", arch="resnet9000")
    ck("archtype.pt", arch=["digits_cnn"])
    ck("ncls.pt", num_classes=10**9)
    ck("nclsneg.pt", num_classes=-3)
    ck("nclsstr.pt", num_classes="ten")
    ck("dataset.pt", dataset="mnist\x1b[31m")
    ck("meanlen.pt", mean=[0.1, 0.2, 0.3])
    ck("stdnan.pt", std=[float("nan")])
    ck("stdzero.pt", std=[0.0])
    ck("sigmastr.pt", hparams={"sigma": "abc"})
    ck("sigmanan.pt", hparams={"sigma": float("nan")})
    ck("hparams.pt", hparams=[1, 2])
    ck("method.pt", method=12)
    ck("nomodel.pt", model=_DROP)
    ck("modeltype.pt", model="weights")
    ck("esc.pt", arch="digits\x1b[2J\rcnn")
    torch.save({"arch": "digits_cnn", "state_dict": {"1.x": torch.zeros(1)}, "payload": _Evil()},
               root / "evil.pt")
    paths["evil"] = str(root / "evil.pt")
    with open(root / "evilpkl.pt", "wb") as f:
        pickle.dump({"arch": "digits_cnn", "state_dict": _Evil()}, f)
    paths["evilpkl"] = str(root / "evilpkl.pt")
    torch.save([1, 2, 3], root / "list.pt")
    paths["list"] = str(root / "list.pt")
    (root / "text.pt").write_text("this is a text file, not a checkpoint\n" * 3)
    paths["text"] = str(root / "text.pt")
    (root / "json.pt").write_text('{"arch": "digits_cnn", "state_dict": {}}')
    paths["json"] = str(root / "json.pt")
    (root / "empty.pt").write_bytes(b"")
    paths["empty"] = str(root / "empty.pt")
    (root / "dir.pt").mkdir()
    paths["dirpt"] = str(root / "dir.pt")
    (root / "data.tar.gz").write_bytes(b"\x1f\x8b not really")
    paths["tar"] = str(root / "data.tar.gz")

    # certify and predict outputs, made by the commands themselves
    tsv, ptsv = root / "c.tsv", root / "p.tsv"
    quick = ["--dataset", "digits", "--n", "50", "--batch", "50", "--max", "2", "--quiet",
             "--device", "cpu"]
    assert main(["certify", paths["ck"], *quick, "--n0", "10", "--out", str(tsv)]) == 0
    assert main(["predict", paths["ck"], *quick, "--out", str(ptsv)]) == 0
    paths.update(tsv=str(tsv), ptsv=str(ptsv))
    assert main([*A[:1], paths["ck"], *A[2:], "--out", str(root / "att.json")]) == 0
    paths["att"] = str(root / "att.json")
    (root / "bin.tsv").write_bytes(bytes(range(256)) * 8)
    paths["bin"] = str(root / "bin.tsv")
    (root / "latin1.tsv").write_bytes("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t"
                                      "0:00:00\n# caf\xe9\n".encode("latin-1"))
    paths["latin1"] = str(root / "latin1.tsv")
    (root / "badrow.tsv").write_text(tsv.read_text() + "7\tseven\t1\t0.5\t1\t0:00:00\n")
    paths["badrow"] = str(root / "badrow.tsv")
    (root / "headonly.tsv").write_text(tsv.read_text().splitlines()[0] + "\n")
    paths["headonly"] = str(root / "headonly.tsv")
    for name, sidecar in [("sidetext", "not json {"), ("sidelist", "[1, 2]"),
                          ("sidetypes", json.dumps({"skip": 3, "split": "test", "sequential": "x"})),
                          ("sidenum", json.dumps({"split_size": "many", "n": [1]}))]:
        p = root / f"{name}.tsv"
        p.write_text(tsv.read_text())
        Path(str(p) + ".json").write_text(sidecar)
        paths[name] = str(p)
    (root / "esc\x1b[31m.tsv").write_bytes(b"\x00\x01")
    paths["escname"] = str(root / "esc\x1b[31m.tsv")
    (root / "config.json").write_text("not json at all")
    paths["cfgtext"] = str(root / "config.json")
    (root / "config.bin").write_bytes(b"\xff\xfe\x00garbage")
    paths["cfgbin"] = str(root / "config.bin")
    (root / "cfglist.json").write_text("[1, 2, 3]")
    paths["cfglist"] = str(root / "cfglist.json")
    return paths


# ----------------------------------------------------------------------------- case setups
def _write(name: str, data: str | bytes) -> Callable[[Path, dict], None]:
    def setup(d: Path, fx: dict) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return setup


def _mkdir(name: str) -> Callable[[Path, dict], None]:
    def setup(d: Path, fx: dict) -> None:
        (d / name).mkdir(parents=True)
    return setup


def _copy(src: str, name: str, sidecar: bool = True) -> Callable[[Path, dict], None]:
    def setup(d: Path, fx: dict) -> None:
        (d / name).write_bytes(Path(fx[src]).read_bytes())
        if sidecar and Path(fx[src] + ".json").exists():
            (d / (name + ".json")).write_bytes(Path(fx[src] + ".json").read_bytes())
    return setup


def _both(*setups):
    def setup(d: Path, fx: dict) -> None:
        for s in setups:
            s(d, fx)
    return setup


def _train_run(d: Path, fx: dict) -> None:
    """A finished tiny run directory ``run`` (config.json, metrics.jsonl, last.pt)."""
    run = d / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")


FOREIGN_JSON = '{"acc":0.93}'
C = ["certify", "{ck}", "--dataset", "digits", "--n0", "10", "--n", "50", "--batch", "50",
     "--max", "2", "--quiet", "--device", "cpu"]
CS = C[:6] + C[8:] + ["--sequential"]   # sequential: --n-max bounds the samples; no --n
assert "--n" not in CS and C[6:8] == ["--n", "50"]
P = ["predict", "{ck}", "--dataset", "digits", "--n", "50", "--batch", "50", "--max", "2",
     "--quiet", "--device", "cpu"]
A = ["attack", "{ck}", "--dataset", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "1",
     "--n-examples", "4", "--batch", "4", "--quiet", "--device", "cpu"]
E = ["export", "{ck}", "--format", "state_dict"]
T = ["train", "--dataset", "digits", "--arch", "digits_cnn", "--epochs", "1", "--max-train", "100",
     "--max-eval", "10", "--batch", "32", "--quiet", "--device", "cpu"]
Y = ["analyze", "{tsv}", "--radii", "0", "0.5", "--quiet"]

CKPT_CASES = [  # (fixture, needle): hostile checkpoints, tried on every command that loads one
    ("text", "checkpoint"), ("json", "checkpoint"), ("empty", "checkpoint"), ("dirpt", "checkpoint"),
    ("list", "checkpoint"), ("evil", "refused"), ("evilpkl", "refused"),
    ("inch", "in_channels"), ("inch0", "in_channels"), ("arch", "arch"), ("archtype", "arch"),
    ("ncls", "num_classes"), ("nclsneg", "num_classes"), ("nclsstr", "num_classes"),
    ("dataset", "dataset"), ("meanlen", "mean"), ("stdnan", "std"), ("stdzero", "std"),
    ("sigmastr", "sigma"), ("sigmanan", "sigma"), ("hparams", "hparams"), ("method", "method"),
    ("nomodel", "model"), ("modeltype", "model"), ("esc", "arch"),
]

CASES: list[tuple[str, list[str], Callable | None, str]] = [
    # --- certify: resume must refuse foreign files, touching nothing (sidecar included)
    ("certify-resume-foreign-json", C + ["--out", "{d}/r.json", "--resume"],
     _write("r.json", FOREIGN_JSON), "not a certify output"),
    ("certify-resume-predict-tsv", C + ["--out", "{d}/p.tsv", "--resume"], _copy("ptsv", "p.tsv"),
     "not a certify output"),
    ("certify-resume-sequential-tsv", CS + ["--out", "{d}/c.tsv", "--resume"],
     _copy("tsv", "c.tsv"), "not a certify --sequential output"),
    ("certify-resume-binary", C + ["--out", "{d}/b.tsv", "--resume"], _copy("bin", "b.tsv"), "b.tsv"),
    ("certify-resume-no-sidecar", C + ["--out", "{d}/c.tsv", "--resume"],
     _copy("tsv", "c.tsv", sidecar=False), "sidecar"),
    ("certify-resume-sidecar-text", C + ["--out", "{d}/c.tsv", "--resume"],
     _both(_copy("tsv", "c.tsv", sidecar=False), _write("c.tsv.json", "nope")), "sidecar"),
    ("certify-resume-sidecar-dir", C + ["--out", "{d}/c.tsv", "--resume"],
     _both(_copy("tsv", "c.tsv", sidecar=False), _mkdir("c.tsv.json")), "directory"),
    ("certify-resume-other-settings", C + ["--out", "{d}/c.tsv", "--resume", "--alpha", "0.01"],
     _copy("tsv", "c.tsv"), "other settings: --alpha (0.001, now"),
    ("certify-resume-foreign-sidecar", C + ["--out", "{d}/c.tsv", "--resume"],
     _both(_copy("tsv", "c.tsv", sidecar=False), _write("c.tsv.json", "{}")), "not the sidecar"),
    ("certify-resume-predict-sidecar", C + ["--out", "{d}/c.tsv", "--resume"],
     _both(_copy("tsv", "c.tsv", sidecar=False), lambda d, fx: (d / "c.tsv.json").write_bytes(
         Path(fx["ptsv"] + ".json").read_bytes())), "not the sidecar"),
    ("certify-exists", C + ["--out", "{d}/c.tsv"], _copy("tsv", "c.tsv"), "already exists"),
    ("certify-sidecar-dir", C + ["--out", "{d}/n.tsv"], _mkdir("n.tsv.json"), "directory"),
    ("certify-out-is-checkpoint", C + ["--out", "{ck}"], None, "checkpoint"),
    ("certify-out-is-checkpoint-resume", C + ["--out", "{ck}", "--resume"], None, "checkpoint"),
    ("certify-out-is-data-root", C + ["--data-root", "{tar}", "--out", "{tar}"], None, "data-root"),
    ("certify-out-too-long", C + ["--out", "{d}/" + LONG + ".tsv"], None, "too long"),
    ("certify-out-proc", C + ["--out", "/proc/robustmaxup.tsv"], None, "/proc"),
    ("certify-out-dir", C + ["--out", "{d}/sub"], _mkdir("sub"), "directory"),
    ("certify-out-under-file", C + ["--out", "{d}/f/x.tsv"], _write("f", "x"), "is a file"),
    ("certify-out-nul", C + ["--out", "{d}/a\x00b.tsv"], None, "--out"),
    ("certify-n-huge", C + ["--n", str(10**15)], None, "--n must"),
    ("certify-n0-huge", C + ["--n0", str(10**15)], None, "--n0 must"),
    ("certify-n-max-huge", CS + ["--n-max", str(10**15)], None, "--n-max must"),
    ("certify-batch-huge", C + ["--batch", str(10**12), "--n", str(10**9)], None, "--batch"),
    ("certify-images-per-batch-huge", C + ["--max", "-1", "--images-per-batch", str(10**9),
                                           "--n", str(10**8), "--batch", str(10**9)], None, "--batch"),
    ("certify-alpha-nan", C + ["--alpha", "nan"], None, "--alpha"),
    ("certify-sigma-inf", C + ["--sigma", "inf"], None, "--sigma"),
    ("certify-sigma-neg", C + ["--sigma", "-0.5"], None, "--sigma"),
    ("certify-skip-zero", C + ["--skip", "0"], None, "--skip"),
    ("certify-max-zero", C + ["--max", "0"], None, "--max"),
    ("certify-seed-huge", C + ["--seed", str(10**30)], None, "--seed"),
    ("certify-radii-neg", CS + ["--radii", "-1"], None, "--radii"),
    ("certify-unknown-dataset", ["certify", "{ck}", "--dataset", "mnist"], None, "mnist"),
    ("certify-device-bogus", C + ["--device", "quantum"], None, "quantum"),
    ("certify-ckpt-too-long", ["certify", "{d}/" + LONG + ".pt", "--dataset", "digits"], None, "too long"),
    ("certify-ckpt-device", ["certify", "/dev/zero", "--dataset", "digits"], None, "regular file"),
    ("certify-ckpt-missing", ["certify", "{d}/missing.pt", "--dataset", "digits"], None, "does not exist"),
    ("certify-ckpt-esc-name", C[:1] + ["{escname}"] + C[2:], None, "checkpoint"),
    # --- predict
    ("predict-resume-certify-tsv", P + ["--out", "{d}/c.tsv", "--resume"], _copy("tsv", "c.tsv"),
     "not a predict output"),
    ("predict-resume-foreign-json", P + ["--out", "{d}/r.json", "--resume"],
     _write("r.json", FOREIGN_JSON), "not a predict output"),
    ("predict-out-is-checkpoint", P + ["--out", "{ck}"], None, "checkpoint"),
    ("predict-out-too-long", P + ["--out", "{d}/" + LONG], None, "too long"),
    ("predict-out-proc", P + ["--out", "/proc/self/robustmaxup.tsv"], None, "/proc"),
    ("predict-n-huge", P + ["--n", str(10**15)], None, "--n must"),
    ("predict-batch-huge", P + ["--batch", str(10**12), "--n", str(10**9)], None, "--batch"),
    ("predict-alpha-one", P + ["--alpha", "1"], None, "--alpha"),
    # --- analyze
    ("analyze-binary", ["analyze", "{bin}"], None, "UTF-8"),
    ("analyze-latin1", ["analyze", "{latin1}"], None, "UTF-8"),
    ("analyze-empty", ["analyze", "{empty}"], None, "empty"),
    ("analyze-directory", ["analyze", "{root}"], None, "directory"),
    ("analyze-device", ["analyze", "/dev/zero"], None, "regular file"),
    ("analyze-missing", ["analyze", "{d}/missing.tsv"], None, "missing.tsv"),
    ("analyze-too-long", ["analyze", "{d}/" + LONG], None, "too long"),
    ("analyze-header-only", ["analyze", "{headonly}"], None, "no rows"),
    ("analyze-predict-and-certify-tsv", ["analyze", "{ptsv}", "{tsv}"], None, "not both"),
    ("analyze-predict-tsv-plot", ["analyze", "{ptsv}", "--plot", "{d}/p.png"], None, "no radii"),
    ("analyze-bad-row", ["analyze", "{badrow}"], None, "malformed"),
    ("analyze-out-is-input", Y + ["--out", "{tsv}"], None, "input"),
    ("analyze-out-is-sidecar", Y + ["--out", "{tsv}.json"], None, "input"),
    ("analyze-plot-is-input", Y + ["--plot", "{tsv}"], None, "input"),
    ("analyze-plot-extension", Y + ["--plot", "{d}/p.xyz", "--out", "{d}/t.md"], None, "--plot"),
    ("analyze-plot-no-extension", Y + ["--plot", "{d}/plot"], None, "--plot"),
    ("analyze-plot-proc", Y + ["--plot", "/proc/p.png"], None, "/proc"),
    ("analyze-plot-dir", Y + ["--plot", "{d}/p.png"], _mkdir("p.png"), "directory"),
    ("analyze-out-too-long", Y + ["--out", "{d}/" + LONG], None, "too long"),
    ("analyze-out-dir", Y + ["--out", "{d}"], None, "directory"),
    ("analyze-out-equals-plot", Y + ["--out", "{d}/a.pdf", "--plot", "{d}/a.pdf"], None, "--plot"),
    ("analyze-out-proc", Y + ["--plot", "{d}/ok.png", "--out", "/proc/t.md"], None, "/proc"),
    ("analyze-radii-nan", ["analyze", "{tsv}", "--radii", "nan"], None, "--radii"),
    ("analyze-sidecar-text", ["analyze", "{sidetext}"], None, "sidecar"),
    ("analyze-sidecar-list", ["analyze", "{sidelist}"], None, "sidecar"),
    ("analyze-sidecar-types", ["analyze", "{sidetypes}"], None, "sidecar"),
    ("analyze-sidecar-numbers", ["analyze", "{sidenum}"], None, "sidecar"),
    ("analyze-esc-name", ["analyze", "{escname}"], None, "UTF-8"),
    ("analyze-sidecar-dir", ["analyze", "{d}/c.tsv"], _both(_copy("tsv", "c.tsv", sidecar=False),
                                                           _mkdir("c.tsv.json")), "sidecar"),
    # --- attack
    ("attack-out-is-checkpoint", A + ["--out", "{ck}"], None, "checkpoint"),
    ("attack-save-adv-is-checkpoint", A + ["--out", "{d}/a.json", "--save-adv", "{ck}"], None, "checkpoint"),
    ("attack-out-is-data-root", A + ["--data-root", "{tar}", "--out", "{tar}"], None, "data-root"),
    ("attack-resume-foreign-json", A + ["--out", "{d}/r.json", "--resume"],
     _write("r.json", FOREIGN_JSON), "r.json"),
    ("attack-resume-foreign-tsv", A + ["--out", "{d}/r.json", "--resume"],
     _write("r.tsv", "a\tb\n1\t2\n"), "r.tsv"),
    ("attack-resume-foreign-state", A + ["--out", "{d}/r.json", "--resume"],
     _write("r.json.state.pt", "hello"), "state"),
    ("attack-resume-foreign-adv", A + ["--out", "{d}/r.json", "--save-adv", "{d}/adv.pt", "--resume"],
     _write("adv.pt", "my precious data"), "adv.pt"),
    ("attack-resume-certify-tsv", A + ["--out", "{d}/c.json", "--resume"], _copy("tsv", "c.tsv"), "c.tsv"),
    ("attack-resume-finished-other-seed", A + ["--out", "{d}/att.json", "--resume", "--seed", "1"],
     _both(_copy("att", "att.json"), lambda d, fx: (d / "att.tsv").write_bytes(
         Path(fx["att"]).with_suffix(".tsv").read_bytes())), "other settings: --seed (0, now 1)"),
    ("attack-resume-finished-other-eps", A[:6] + ["--eps", "0.2"] + A[8:] + ["--out", "{d}/att.json", "--resume"],
     _copy("att", "att.json"), "other settings"),
    ("attack-exists-tsv", A + ["--out", "{d}/r.json"], _write("r.tsv", "x"), "already exists"),
    ("attack-tsv-dir", A + ["--out", "{d}/r.json"], _mkdir("r.tsv"), "directory"),
    ("attack-state-dir", A + ["--out", "{d}/r.json", "--resume"], _mkdir("r.json.state.pt"), "directory"),
    ("attack-adv-dir", A + ["--out", "{d}/r.json", "--save-adv", "{d}"], None, "directory"),
    ("attack-out-too-long", A + ["--out", "{d}/" + LONG + ".json"], None, "too long"),
    ("attack-adv-too-long", A + ["--out", "{d}/r.json", "--save-adv", "{d}/" + LONG], None, "too long"),
    ("attack-out-proc", A + ["--out", "/proc/r.json"], None, "/proc"),
    ("attack-rescores-huge", A + ["--out", "{d}/r.json", "--rescores", str(10**9)], None, "--rescores"),
    ("attack-steps-huge", A + ["--out", "{d}/r.json", "--steps", str(10**12)], None, "--steps"),
    ("attack-m-huge", A + ["--out", "{d}/r.json", "--smoothed", "--m", str(10**9)], None, "--m"),
    ("attack-memory-huge", A + ["--out", "{d}/r.json", "--batch", str(10**12),
                                "--n-examples", str(10**12), "--smoothed", "--m", "100000"], None, "--m"),
    ("attack-n-examples-neg", A + ["--out", "{d}/r.json", "--n-examples", "-5"], None, "--n-examples"),
    ("attack-eps-nan", A[:6] + ["--eps", "nan"] + A[8:], None, "--eps"),
    ("attack-eps-inf", A[:6] + ["--eps", "inf"] + A[8:], None, "--eps"),
    # --- export
    ("export-out-is-checkpoint", E + ["--out", "{ck}"], None, "checkpoint"),
    ("export-out-exists", E + ["--out", "{tsv}"], None, "already exists"),
    ("export-out-too-long", E + ["--out", "{d}/" + LONG], None, "too long"),
    ("export-out-proc", E + ["--out", "/proc/w.pt"], None, "/proc"),
    ("export-out-dir", E + ["--out", "{d}"], None, "directory"),
    ("export-out-under-file", E + ["--out", "{d}/f/w.pt"], _write("f", "x"), "is a file"),
    ("export-out-dev", E + ["--out", "/dev/robustmaxup.pt"], None, "/dev"),
    # --- train
    ("train-max-eval-neg", T + ["--out", "{d}/run", "--max-eval", "-1"], None, "--max-eval"),
    ("train-lr-gamma-nan", T + ["--out", "{d}/run", "--lr-gamma", "nan"], None, "--lr-gamma"),
    ("train-workers-neg", T + ["--out", "{d}/run", "--workers", "-1"], None, "--workers"),
    ("train-max-train-neg", T + ["--out", "{d}/run", "--max-train", "-5"], None, "--max-train"),
    ("train-val-size-neg", T + ["--out", "{d}/run", "--val-size", "-2"], None, "--val-size"),
    ("train-no-step", T + ["--out", "{d}/run", "--batch", "5000"], None, "--batch"),
    ("train-lr-inf", T + ["--out", "{d}/run", "--lr", "inf"], None, "--lr"),
    ("train-config-device", ["train", "--config", "/dev/zero", "--out", "{d}/run"], None, "regular file"),
    ("train-out-too-long", T + ["--out", "{d}/" + LONG], None, "too long"),
    ("train-out-proc", T + ["--out", "/proc/run"], None, "/proc"),
    ("train-out-file", T + ["--out", "{ck}"], None, "not a directory"),
    ("train-out-nonempty", T + ["--out", "{d}/run"], _train_run, "--resume"),
    ("train-out-is-data-root", T + ["--data-root", "{root}", "--out", "{root}", "--resume"], None,
     "data-root"),
    ("train-config-text", T + ["--out", "{d}/run", "--config", "{cfgtext}"], None, "--config"),
    ("train-config-binary", T + ["--out", "{d}/run", "--config", "{cfgbin}"], None, "--config"),
    ("train-config-list", T + ["--out", "{d}/run", "--config", "{cfglist}"], None, "--config"),
    ("train-config-dir", T + ["--out", "{d}/run", "--config", "{root}"], None, "--config"),
    ("train-resume-text-last", T + ["--out", "{d}/run", "--resume"],
     _write("run/last.pt", "not a checkpoint"), "last.pt"),
    ("train-resume-last-dir", T + ["--out", "{d}/run", "--resume"], _mkdir("run/last.pt"), "last.pt"),
    ("train-resume-config-dir", T + ["--out", "{d}/run", "--resume"], _mkdir("run/config.json"),
     "config.json"),
    ("train-resume-hostile-last", T + ["--out", "{d}/run", "--resume"],
     lambda d, fx: (d / "run").mkdir() or (d / "run" / "last.pt").write_bytes(Path(fx["inch"]).read_bytes()),
     "in_channels"),
]
for cmd, base in [("certify", C), ("predict", P), ("attack", A + ["--out", "{d}/r.json"]),
                  ("export", E + ["--out", "{d}/w.pt"])]:
    for name, needle in CKPT_CASES:
        if cmd in ("certify", "export") or name in ("text", "evil", "inch", "ncls", "esc"):
            CASES.append((f"{cmd}-ckpt-{name}", base[:1] + ["{" + name + "}"] + base[2:], None, needle))


# ----------------------------------------------------------------------------- the check
def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under ``roots`` with its kind, size, mtime and content hash."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
                out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_touches_nothing(case, fx, tmp_path, monkeypatch, capsys):
    name, template, setup, needle = case
    d = tmp_path / "work"
    d.mkdir()
    if setup is not None:
        setup(d, fx)
    monkeypatch.chdir(d)
    # a machine with at most 16 GiB free, so the memory limits do not depend on the host
    real = limits.available_memory
    monkeypatch.setattr(limits, "available_memory", lambda dev: min(real(dev) or 2**34, 2**34))
    argv = [a.format(d=d, **fx) for a in template]
    before = _snapshot(Path(fx["root"]), d)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert not any(c in err[:-1] for c in CONTROL), repr(err)
    assert needle in lines[0], lines[0]
    assert _snapshot(Path(fx["root"]), d) == before, "files were created, changed or removed"
    assert not os.path.exists("/tmp/robustmaxup-pwned")


def test_there_are_many_cases_on_every_command():
    by = {}
    for name, template, _, _ in CASES:
        by[template[0]] = by.get(template[0], 0) + 1
    assert set(by) == {"train", "certify", "predict", "analyze", "attack", "export"}
    assert sum(by.values()) >= 60 and min(by.values()) >= 5, by


# ----------------------------------------------------------------------------- hostile strings
def test_hostile_strings_are_escaped_in_tables_logs_and_plots(fx, tmp_path, monkeypatch, capsys):
    """File names and sidecar strings reach the terminal and the tables escaped: no control
    character raw, Markdown pipes and LaTeX specials escaped, ``$`` never starts mathtext."""
    name = "a|b$_{x}^~%&#\x1b[2J\r\udcff.tsv"  # \udcff: the undecodable byte 0xff of a file name
    tsv = tmp_path / name
    tsv.write_bytes(Path(fx["tsv"]).read_bytes())
    meta = json.loads(Path(fx["tsv"] + ".json").read_text())
    meta["split"] = "test\x1b]0;pwned\x07\u202e"
    Path(str(tsv) + ".json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)
    for fmt in ("markdown", "latex", "csv"):
        capsys.readouterr()
        assert main(["analyze", name, name, "--radii", "0", "--format", fmt, "--plot", "p.png"]) == 0
        out, err = capsys.readouterr()
        for text in (out, err):
            assert not any(c in text.replace("\n", "").replace("\t", "") for c in CONTROL + ["\u202e"]), repr(text)
        assert "\\x1b[2J\\r\\udcff.tsv" in out and "\\x1b]0;pwned\\x07\\u202e" in out
        if fmt == "markdown":
            assert "a\\|b$_{x}" in out
        if fmt == "latex":
            assert r"a|b\$\_\{x\}\textasciicircum{}\textasciitilde{}\%\&\#" in out
        (tmp_path / "p.png").unlink()


def test_log_lines_and_error_lines_escape_control_characters(capsys):
    import logging

    from robustmaxup.cli.common import error_line, setup_logging
    from robustmaxup.errors import UserError
    from robustmaxup.runtime.text import safe_text

    assert safe_text("a\x1b[31mb\rc\x00d\u202ee") == "a\\x1b[31mb\\rc\\x00d\\u202ee"
    assert safe_text("a\nb", keep="\n") == "a\nb"
    setup_logging()
    logging.getLogger("robustmaxup.test").warning("wrote %s", "x\x1b[2Jy\bz")
    assert "x\\x1b[2Jy\\x08z" in capsys.readouterr().err
    line = error_line("certify", UserError("bad\nfile \x1b[31mred"))
    assert "\n" not in line and "\x1b" not in line and "bad\\nfile \\x1b[31mred" in line


def test_default_outputs_carry_the_checkpoint_name(tmp_path):
    import argparse

    from robustmaxup.certify.runner import SequentialSettings, SmoothingJob, default_out
    from robustmaxup.cli.attack import default_out as attack_out

    a = default_out(SmoothingJob("certify", "runs/gauss/last.pt", "digits"), 0.25)
    b = default_out(SmoothingJob("certify", "runs/maxup/last.pt", "digits"), 0.25)
    assert str(a) == "certify_gauss-last_test_sigma0.25.tsv" and a != b
    assert str(default_out(SmoothingJob("predict", "c10 model\x1b.pth.tar", "digits"), 0.5)) == \
        "predict_c10_model_test_sigma0.5.tsv"
    sequential = SmoothingJob("certify", "runs/gauss/last.pt", "digits", sequential=SequentialSettings())
    assert str(default_out(sequential, 0.25)) == "certify_gauss-last_test_sigma0.25_sequential.tsv"
    args = argparse.Namespace(checkpoint="m/best.pt", attack="pgd", norm="L2", smoothed=False, sigma=None)
    assert str(attack_out(args, 0.5)) == "attack_m-best_pgd_L2_eps0.5.json"
    args.smoothed = True
    assert str(attack_out(args, 0.5)) == "attack_m-best_pgd_L2_eps0.5_smoothed.json"
    args.sigma = 0.5
    assert str(attack_out(args, 0.5)) == "attack_m-best_pgd_L2_eps0.5_smoothed_sigma0.5.json"
