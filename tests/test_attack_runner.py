"""``robustmaxup.attacks.runner.evaluate_dataset``: the Python API writes exactly what the CLI
writes, PGD results do not depend on --batch, and --resume re-checks a finished run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import robustmaxup.attacks.runner as runner
from robustmaxup.attacks import AttackConfig, ChunkRecord, evaluate_dataset
from robustmaxup.attacks.runner import _summary
from robustmaxup.checkpoints import load_model
from robustmaxup.cli.attack import main
from robustmaxup.data import load_split, spread_indices
from robustmaxup.errors import UserError

from tests.fakes import KilledAt

RESULT_KEYS = ("n", "indices", "attacks", "attack_config", "seed", "clean_accuracy", "robust_accuracy",
               "robust_accuracy_after", "rescoring", "clean_check", "clean_correct", "robust_correct",
               "smoothed", "rescores", "seed_rule", "model_sha256", "dataset", "split")


@pytest.fixture(scope="module")
def ckpt(digits_checkpoint) -> Path:
    return Path(digits_checkpoint)


def _cli(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [str(ckpt), "--dataset", "digits", "--out", str(out), "--quiet", *extra]


PGD = ["--attack", "pgd", "--eps", "0.1", "--steps", "3", "--n-examples", "30", "--seed", "5"]
SMOOTHED = ["--attack", "pgd", "--norm", "L2", "--eps", "0.5", "--steps", "3", "--smoothed", "--copies", "4",
            "--n-examples", "14", "--seed", "2"]


def test_python_api_writes_exactly_what_the_cli_writes(ckpt, tmp_path, capsys):
    cli_out, api_out = tmp_path / "cli.json", tmp_path / "api.json"
    assert main(_cli(ckpt, cli_out, *PGD, "--batch", "7")) == 0
    capsys.readouterr()

    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    indices = spread_indices(len(split), 30).tolist()
    config = AttackConfig(eps=0.1, attack="pgd", steps=3, batch_size=7)
    summary = evaluate_dataset(model, split, indices, config, seed=5, out=api_out)
    assert capsys.readouterr().err.count("attack pgd") == 0  # stderr is no terminal: no bar

    assert (tmp_path / "cli.tsv").read_text() == (tmp_path / "api.tsv").read_text()
    a, b = json.loads(cli_out.read_text()), json.loads(api_out.read_text())
    for key in RESULT_KEYS:
        assert a[key] == b[key], key
    assert "checkpoint_sha256" in a and "checkpoint_sha256" not in b  # the CLI's extra record
    assert summary.record == b and summary.robust_accuracy == b["robust_accuracy"]
    assert summary.examples.tsv() == (tmp_path / "api.tsv").read_text()
    assert not (tmp_path / "api.json.state.pt").exists()

    in_memory = evaluate_dataset(model, split, indices, config, seed=5, progress=False)
    assert in_memory.paths is None and in_memory.examples.tsv() == (tmp_path / "cli.tsv").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.json", "api.tsv", "cli.json", "cli.tsv"]


@pytest.mark.parametrize("flags", [PGD, SMOOTHED], ids=["pgd", "smoothed-pgd"])
def test_pgd_results_do_not_depend_on_batch(ckpt, tmp_path, flags):
    for b in ("3", "7"):
        assert main(_cli(ckpt, tmp_path / f"b{b}.json", *flags, "--batch", b,
                         "--save-adv", str(tmp_path / f"adv{b}.pt"))) == 0
    rows3, rows7 = (tmp_path / "b3.tsv").read_text(), (tmp_path / "b7.tsv").read_text()
    assert rows3 == rows7
    a, b = (json.loads((tmp_path / f"b{k}.json").read_text()) for k in ("3", "7"))
    assert a["rescoring"] == b["rescoring"] and a["robust_accuracy"] == b["robust_accuracy"]
    xa, xb = (torch.load(tmp_path / f"adv{k}.pt", weights_only=True)["x_adv"] for k in ("3", "7"))
    assert torch.allclose(xa, xb, atol=1e-5)
    if "--smoothed" in flags:
        assert a["randomized"] and a["rescoring"]["repeats"] == 5


def test_resume_of_a_finished_run_checks_the_settings(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = _cli(ckpt, out, *PGD, "--batch", "10")
    assert main(args) == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    capsys.readouterr()
    changed = [["--steps", "4"], ["--seed", "6"], ["--batch", "11"], ["--eps", "0.2"],
               ["--n-examples", "31"], ["--save-adv", str(tmp_path / "adv.pt")]]
    for change in changed:
        new = _cli(ckpt, out, *PGD, "--batch", "10")
        for flag, value in zip(change[::2], change[1::2]):
            if flag in new:
                new[new.index(flag) + 1] = value
            else:
                new += [flag, value]
        assert main(new + ["--resume"]) == 2, change
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot resume" in err, (change, err)
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before
    assert main(args + ["--resume"]) == 0
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before

    # a finished run made before per-example seeding (no seed_rule/model hash) is refused
    old = json.loads(out.read_text())
    del old["seed_rule"], old["model_sha256"]
    out.write_text(json.dumps(old))
    assert main(args + ["--resume"]) == 2
    assert "another version" in capsys.readouterr().err


def test_state_of_another_version_or_other_settings_is_refused(ckpt, tmp_path, monkeypatch):
    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    config = AttackConfig(eps=0.1, attack="pgd", steps=2, batch_size=4)
    out = tmp_path / "r.json"
    state = tmp_path / "r.json.state.pt"
    torch.save({"header": {}, "chunks": {}}, state)
    with pytest.raises(UserError, match="another version"):
        evaluate_dataset(model, split, [0, 1, 2], config, seed=0, out=out, resume=True)
    with pytest.raises(UserError, match="already exists"):
        evaluate_dataset(model, split, [0, 1, 2], config, seed=0, out=out)
    state.unlink()

    killed = KilledAt(monkeypatch, runner, "_run_chunk", at=2)  # the second chunk is interrupted
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(model, split, list(range(8)), config, seed=0, out=out, progress=False)
    killed.disarm()
    assert state.exists() and not out.exists()
    other = AttackConfig(eps=0.1, attack="pgd", steps=3, batch_size=4)
    with pytest.raises(UserError, match=r"other settings: steps \(2, now 3\)"):
        evaluate_dataset(model, split, list(range(8)), other, seed=0, out=out, resume=True)
    done = evaluate_dataset(model, split, list(range(8)), config, seed=0, out=out, resume=True)
    fresh = evaluate_dataset(model, split, list(range(8)), config, seed=0, progress=False)
    assert done.examples.tsv() == fresh.examples.tsv() and not state.exists()


def test_library_errors_name_fields(ckpt):
    from robustmaxup.runtime.checks import FieldError

    model, _ = load_model(ckpt, dataset="digits")
    split = load_split("digits", "test")
    bad = [({"batch_size": 0}, "batch_size"), ({"steps": 0}, "steps"), ({"eps": 2.0}, "eps"),
           ({"rescores": 0}, "rescores"), ({"step_size": -1.0}, "step_size"),
           ({"attack": "cw"}, "attack"), ({"norm": "L1"}, "norm")]
    for kw, field in bad:
        with pytest.raises(FieldError) as e:
            evaluate_dataset(model, split, [0], AttackConfig(**{"eps": 0.1, "attack": "pgd", **kw}), seed=0)
        assert e.value.field == field
    for indices in ([], [len(split)]):
        with pytest.raises(FieldError, match="indices"):
            evaluate_dataset(model, split, indices, AttackConfig(eps=0.1, attack="pgd"), seed=0)
    with pytest.raises(FieldError, match="out"):
        evaluate_dataset(model, split, [0], AttackConfig(eps=0.1, attack="pgd"), seed=0, resume=True)


def test_chunk_record_round_trip_and_concat():
    rec = ChunkRecord(indices=torch.tensor([4, 9]), labels=torch.tensor([1, 2]),
                      clean=torch.tensor([True, True]), stages={"pgd": torch.tensor([True, False])},
                      rescored=torch.tensor([[True, True], [False, True]]), seconds=1.5,
                      attack_seconds={"pgd": 1.0})
    back = ChunkRecord.from_state(rec.to_state())
    assert back.tsv() == rec.tsv()
    assert rec.robust.tolist() == [False, False]
    both = ChunkRecord.concat([rec, back])
    assert both.indices.tolist() == [4, 9, 4, 9] and both.rescored.shape == (2, 4)
    assert both.seconds == 3.0 and both.attack_seconds == {"pgd": 2.0}
    assert rec.tsv().splitlines() == ["idx\tlabel\tclean_correct\trobust_correct\trobust_after_pgd\t"
                                      "rescore_correct", "4\t1\t1\t0\t1\t0.5000", "9\t2\t1\t0\t0\t1.0000"]
    with pytest.raises(ValueError):
        ChunkRecord.from_state({**rec.to_state(), "labels": torch.tensor([1])})


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
T, F = True, False  # flags, for the tables below


def _two_attack_record():
    return ChunkRecord(
        indices=torch.arange(5), labels=torch.zeros(5, dtype=torch.int64),
        clean=torch.tensor([T, T, T, T, F]),
        stages={"apgd-ce": torch.tensor([T, T, T, F, F]), "square": torch.tensor([T, T, F, F, F])},
        rescored=torch.tensor([[T, F, T, T, T], [T, T, T, T, F]]))


def test_summary_robust_accuracy_is_pointwise_worst_case():
    rec = _two_attack_record()
    assert rec.robust.tolist() == [T, F, F, F, F]  # last (cumulative) stage & every re-scoring
    config = AttackConfig(eps=0.1, attack="pgd", steps=1, batch_size=5)
    s = _summary({"n": 5}, config, [rec], ChunkRecord.concat([rec]), 0.0, None)
    assert s["robust_accuracy"] == 0.2 and s["robust_correct"] == 1
    assert s["clean_accuracy"] == 0.8 and s["clean_correct"] == 4
    assert s["robust_accuracy_after"] == {"apgd-ce": 0.6, "square": 0.4}
    assert s["attacks"] == ["apgd-ce", "square"]
    assert s["rescoring"]["repeats"] == 2 and s["rescoring"]["accuracy_min"] == 0.8


def test_tsv_rows_carry_pointwise_flags():
    lines = _two_attack_record().tsv().splitlines()
    assert lines[0].split("\t") == ["idx", "label", "clean_correct", "robust_correct",
                                    "robust_after_apgd-ce", "robust_after_square", "rescore_correct"]
    assert lines[1] == "0\t0\t1\t1\t1\t1\t1.0000"
    assert lines[2] == "1\t0\t1\t0\t1\t1\t0.5000"


def test_resume_runs_each_unfinished_chunk_once_and_no_finished_one(tmp_path, monkeypatch):
    split = load_split("digits", "test")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(split.info.image_shape), split.info.num_classes))
    config = AttackConfig(eps=0.1, attack="pgd", steps=2, batch_size=4)
    out, idx = tmp_path / "r.json", list(range(12))
    recorded = KilledAt(monkeypatch, runner, "_run_chunk", at=3)  # the third chunk is interrupted
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(model, split, idx, config, seed=0, out=out, progress=False)
    assert [list(args[2]) for args in recorded.calls] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    recorded.calls.clear()
    recorded.at = None  # still recording, never killing
    done = evaluate_dataset(model, split, idx, config, seed=0, out=out, resume=True, progress=False)
    assert [list(args[2]) for args in recorded.calls] == [[8, 9, 10, 11]]
    assert done.record["n"] == 12 and len(done.examples) == 12
    fresh = evaluate_dataset(model, split, idx, config, seed=0, progress=False)
    assert done.examples.tsv() == fresh.examples.tsv()


def test_the_recorded_attack_config_is_the_one_used():
    """``attack_config`` in the JSON records rescores resolved (5 for a smoothed model, not the
    null of "default") and leaves the other attack's fields unset."""
    smoothed_pgd = AttackConfig(eps=0.5, attack="pgd", norm="L2", steps=3, sigma=0.25).as_used()
    assert smoothed_pgd["rescores"] == 5 and smoothed_pgd["steps"] == 3
    assert smoothed_pgd["version"] is None and smoothed_pgd["attacks"] is None
    aa = AttackConfig(eps=0.1, attacks=("apgd-ce",), version="custom", rescores=2).as_used()
    assert aa["rescores"] == 2 and aa["attacks"] == ["apgd-ce"] and aa["version"] == "custom"
    assert aa["steps"] is None and aa["step_size"] is None and aa["copies"] is None and smoothed_pgd["copies"] == 32


def test_a_run_recorded_by_an_earlier_version_still_resumes(ckpt, tmp_path, capsys):
    """Earlier versions recorded attack_config unresolved (rescores null, PGD with AutoAttack's
    version and an unused m); a finished run of theirs is recognised, not refused."""
    out = tmp_path / "r.json"
    args = _cli(ckpt, out, *PGD, "--batch", "10")
    assert main(args) == 0
    record = json.loads(out.read_text())
    record["attack_config"].pop("copies")   # as an earlier version recorded it: m, unresolved
    record["attack_config"].update(rescores=None, version="standard", m=32)
    out.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0                    # recognised as complete: nothing rerun
    assert capsys.readouterr().err == ""
    record["attack_config"]["steps"] = 4                      # a real difference is still refused
    out.write_text(json.dumps(record))
    assert main(args + ["--resume"]) == 2
    assert "other settings: --steps (4, now 3)" in capsys.readouterr().err
