"""Details of the attack-evaluation layer (``attacks.runner.evaluate_dataset`` and
``attacks.evaluation``) found missing by a mutation audit: how robust accuracy is counted over
chunks, which settings a resume must match, which files a resume accepts as its own, and which
randomness each example gets. Tiny CPU models (or a scripted ``evaluate``) keep each test near
a second; every expected value is written out or derived from the seeding primitives."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import robustmaxup.attacks.evaluation as evaluation
import robustmaxup.attacks.runner as runner
from robustmaxup.attacks import AttackConfig, ChunkRecord, evaluate_dataset
from robustmaxup.attacks.evaluation import batch_seed, check_config, evaluate, example_generators
from robustmaxup.attacks.result import AttackResult, rescore
from robustmaxup.attacks.smoothed import SoftSmoothed
from robustmaxup.data import load_split
from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import FieldError
from robustmaxup.runtime.limits import MAX_NOISE_DRAWS, MAX_RESCORES, MAX_STEPS
from robustmaxup.runtime.seeds import stream_generator, stream_seed
from tests.classifiers import LinearK
from tests.fakes import KilledAt, number_provenance

T, F = True, False


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def split():
    return load_split("digits", "test")


def _linear(split, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(split.info.image_shape), split.info.num_classes))


# Scripted verdicts by dataset index (13 examples 0..12, chunks of 4: 4+4+4+1):
#   clean wrong: 3, 7, 11;  apgd-ce breaks also 0, 6, 9, 12;  square breaks also 5;
#   re-scoring 0 wrong on 7;  re-scoring 1 wrong on 8, 9.
# Robust (clean, survives both attacks and both re-scorings): 1, 2, 4, 10.
def _flags(i: int) -> tuple[bool, bool, bool, bool, bool]:
    clean = i not in (3, 7, 11)
    a1 = clean and i not in (0, 6, 9, 12)
    a2 = a1 and i != 5
    return clean, a1, a2, i != 7, i not in (8, 9)


class _Scripted:
    """Stands in for ``runner.evaluate``: verdicts from :func:`_flags`, calls recorded."""

    def __init__(self):
        self.calls = []

    def __call__(self, model, x, y, config, *, seed, indices, log_file=None):
        self.calls.append((None if indices is None else [int(i) for i in indices], seed))
        rows = [_flags(int(i)) for i in indices]
        col = lambda k: torch.tensor([r[k] for r in rows])  # noqa: E731
        return AttackResult(x_adv=x.clone(), clean=col(0), stages={"apgd-ce": col(1), "square": col(2)},
                            rescored=torch.stack([col(3), col(4)]),
                            seconds={"apgd-ce": 1.0, "square": 2.0})


CONFIG = AttackConfig(eps=0.1, attack="pgd", steps=1, batch_size=4)


# ----------------------------------------------------------------------------- runner: counting
def test_robust_accuracy_over_chunks_is_the_pointwise_worst_case(split, tmp_path, monkeypatch):
    """13 examples in chunks of 4 (the last chunk has one): every chunk runs once with its own
    dataset indices, and the totals, the TSV and the x_adv file carry the pointwise verdicts."""
    fake = _Scripted()
    monkeypatch.setattr(runner, "evaluate", fake)
    out, adv = tmp_path / "r.json", tmp_path / "adv.pt"
    s = evaluate_dataset(_linear(split), split, list(range(13)), CONFIG, seed=9, out=out, save_adv=adv,
                         progress=False)
    assert fake.calls == [([0, 1, 2, 3], 9), ([4, 5, 6, 7], 9), ([8, 9, 10, 11], 9), ([12], 9)]
    rec = json.loads(out.read_text())
    assert rec == s.record
    assert rec["n"] == 13 and rec["dataset"] == "digits" and rec["split"] == "test"
    assert rec["clean_correct"] == 10 and rec["clean_accuracy"] == pytest.approx(10 / 13)
    assert rec["robust_correct"] == 4 and rec["robust_accuracy"] == pytest.approx(4 / 13)
    assert rec["robust_accuracy_after"] == pytest.approx({"apgd-ce": 6 / 13, "square": 5 / 13})
    rs = rec["rescoring"]
    assert rs["repeats"] == 2
    assert rs["accuracy_max"] == pytest.approx(12 / 13) and rs["accuracy_min"] == pytest.approx(11 / 13)
    assert rs["accuracy_mean"] == pytest.approx(11.5 / 13)
    assert rs["accuracy_std"] == pytest.approx(1 / 13 / math.sqrt(2))
    t = rec["timings"]
    assert t["seconds_per_attack"] == {"apgd-ce": 4.0, "square": 8.0}
    assert len(t["seconds_per_chunk"]) == 4
    assert t["attack_seconds"] == pytest.approx(sum(t["seconds_per_chunk"]))

    rows = [r.split("\t") for r in (tmp_path / "r.tsv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(13))
    cols = lambda k: [r[k] for r in rows]  # noqa: E731
    assert cols(2) == ["1", "1", "1", "0", "1", "1", "1", "0", "1", "1", "1", "0", "1"]   # clean
    assert cols(3) == ["0", "1", "1", "0", "1", "0", "0", "0", "0", "0", "1", "0", "0"]   # robust
    assert cols(5) == ["0", "1", "1", "0", "1", "0", "0", "0", "1", "0", "1", "0", "0"]   # after square
    assert cols(6)[7:10] == ["0.5000", "0.5000", "0.5000"] and cols(6)[0] == "1.0000"

    saved = torch.load(adv, weights_only=True)
    assert saved["indices"].tolist() == list(range(13)) and saved["x_adv"].shape[0] == 13
    assert [i for i, r in enumerate(saved["robust"].tolist()) if r] == [1, 2, 4, 10]


def test_one_rescoring_reports_zero_spread_and_x_adv_keeps_dataset_indices(split, tmp_path, monkeypatch):
    """A deterministic model is re-scored once: the spread is 0, not the NaN of a one-sample
    std. The x_adv file names each row by its dataset index (not its position)."""
    def once(model, x, y, config, *, seed, indices, log_file=None):
        ok = torch.tensor([int(i) % 2 == 0 for i in indices])
        return AttackResult(x_adv=x, clean=ok, stages={"pgd": ok}, rescored=ok[None])

    monkeypatch.setattr(runner, "evaluate", once)
    idx, adv = [7, 3, 12, 5, 9], tmp_path / "adv.pt"
    s = evaluate_dataset(_linear(split), split, idx, CONFIG, seed=0, out=tmp_path / "r.json", save_adv=adv,
                         progress=False)
    assert s.record["rescoring"]["accuracy_std"] == 0.0 and s.robust_accuracy == pytest.approx(1 / 5)
    saved = torch.load(adv, weights_only=True)
    assert saved["indices"].tolist() == idx and saved["robust"].tolist() == [F, F, T, F, F]


# ----------------------------------------------------------------------------- runner: resume
def _interrupted(split, model, out, monkeypatch, *, seed=0, idx=tuple(range(8))):
    """Run until the second chunk is interrupted: the state holds chunk 0."""
    fake = _Scripted()
    monkeypatch.setattr(runner, "evaluate", fake)
    killed = KilledAt(monkeypatch, runner, "evaluate", at=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_dataset(model, split, list(idx), CONFIG, seed=seed, out=out, progress=False)
    killed.disarm()
    return fake


def test_partial_run_resumes_only_under_the_same_model_seed_and_examples(split, tmp_path, monkeypatch):
    """The state file of a partial run is refused for another seed, other model weights,
    another selection of the same size or a newly asked x_adv file (the chunks done hold no
    x_adv); the same settings run only the missing chunks."""
    model, out = _linear(split), tmp_path / "r.json"
    fake = _interrupted(split, model, out, monkeypatch)
    assert fake.calls == [([0, 1, 2, 3], 0)]
    fake.calls.clear()
    state = tmp_path / "r.json.state.pt"
    before = state.read_bytes()
    other_model = _linear(split, seed=1)
    for kw, what in [({"seed": 1}, "seed"), ({"model": other_model}, "the model's weights (sha256 "),
                     ({"indices": list(range(1, 9))}, "selection"),
                     ({"save_adv": tmp_path / "adv.pt"}, "save_adv")]:
        args = {"model": model, "indices": list(range(8)), "seed": 0, "save_adv": None, **kw}
        with pytest.raises(UserError, match="cannot resume") as e:
            evaluate_dataset(args["model"], split, args["indices"], CONFIG, seed=args["seed"], out=out,
                             resume=True, save_adv=args["save_adv"], progress=False)
        assert what in str(e.value)
        assert state.read_bytes() == before and not out.exists() and not (tmp_path / "adv.pt").exists()
    assert fake.calls == []
    done = evaluate_dataset(model, split, list(range(8)), CONFIG, seed=0, out=out, resume=True, progress=False)
    assert fake.calls == [([4, 5, 6, 7], 0)]
    assert done.record["robust_correct"] == 3 and done.record["clean_correct"] == 6  # 1, 2, 4 robust


def test_each_call_that_attacked_examples_is_a_session_of_the_result(split, tmp_path, monkeypatch):
    """Killed after one chunk of 4 and resumed: the state file names the first call, the result
    both, with the examples each found done and its own provenance (the top-level one is the last)."""
    number_provenance(monkeypatch, runner)
    model, out = _linear(split), tmp_path / "r.json"
    _interrupted(split, model, out, monkeypatch)
    state = torch.load(tmp_path / "r.json.state.pt", weights_only=True)
    assert state["sessions"] == [{"examples_before": 0, "provenance": {"call": 1}}]
    done = evaluate_dataset(model, split, list(range(8)), CONFIG, seed=0, out=out, resume=True, progress=False)
    assert done.record["sessions"] == json.loads(out.read_text())["sessions"] == [
        {"examples_before": 0, "provenance": {"call": 1}}, {"examples_before": 4, "provenance": {"call": 2}}]
    assert done.record["provenance"] == {"call": 2}


def test_a_state_file_from_before_sessions_resumes_with_the_new_call_listed(split, tmp_path, monkeypatch):
    number_provenance(monkeypatch, runner)
    model, out = _linear(split), tmp_path / "r.json"
    _interrupted(split, model, out, monkeypatch)
    path = tmp_path / "r.json.state.pt"
    saved = torch.load(path, weights_only=True)
    del saved["sessions"]
    torch.save(saved, path)
    done = evaluate_dataset(model, split, list(range(8)), CONFIG, seed=0, out=out, resume=True, progress=False)
    assert done.record["sessions"] == [{"examples_before": 4, "provenance": {"call": 2}}]


def test_state_with_a_chunk_outside_the_run_is_refused(split, tmp_path, monkeypatch):
    model, out = _linear(split), tmp_path / "r.json"
    _interrupted(split, model, out, monkeypatch)
    state = tmp_path / "r.json.state.pt"
    saved = torch.load(state, weights_only=True)
    saved["chunks"][2] = saved["chunks"][0]            # 8 examples in chunks of 4: no chunk 2
    torch.save(saved, state)
    with pytest.raises(UserError, match="does not fit"):
        evaluate_dataset(model, split, list(range(8)), CONFIG, seed=0, out=out, resume=True, progress=False)


def test_finished_run_rechecks_model_and_selection_and_its_files(split, tmp_path, monkeypatch):
    """Re-checking a finished run refuses other weights or another selection of the same size,
    and a run whose TSV is gone; the runner's own keys win over ``extra_record``."""
    monkeypatch.setattr(runner, "evaluate", _Scripted())
    model, out = _linear(split), tmp_path / "r.json"
    extra = {"seed": 123, "command": "certify", "model_sha256": "x", "note": "kept"}
    s = evaluate_dataset(model, split, list(range(6)), CONFIG, seed=5, out=out, progress=False,
                         extra_record=extra)
    assert s.record["seed"] == 5 and s.record["command"] == "attack" and s.record["note"] == "kept"
    assert s.record["model_sha256"] != "x"
    same = dict(seed=5, out=out, resume=True, progress=False, extra_record=extra)
    assert evaluate_dataset(model, split, list(range(6)), CONFIG, **same).already_complete
    with pytest.raises(UserError, match=r"the model's weights \(sha256 "):
        evaluate_dataset(_linear(split, seed=1), split, list(range(6)), CONFIG, **same)
    with pytest.raises(UserError, match="selection"):
        evaluate_dataset(model, split, list(range(1, 7)), CONFIG, **same)
    (tmp_path / "r.tsv").unlink()
    with pytest.raises(UserError, match="missing"):
        evaluate_dataset(model, split, list(range(6)), CONFIG, **same)


@pytest.mark.parametrize("name, content, match", [
    ("r.tsv", "idx\tlabel\tclean_correct\trobust_correct\trobust_after_pgd\tnotes\n", "per-example TSV"),
    ("r.tsv", "a\tb\tc\td\trobust_after_pgd\trescore_correct\n", "per-example TSV"),
    ("r.json", json.dumps({"command": "certify"}), "not a result"),
    ("adv.pt", None, "x_adv file"),
], ids=["tsv-tail", "tsv-head", "json-command", "adv-keys"])
def test_resume_refuses_files_it_did_not_write(split, tmp_path, name, content, match):
    """--resume continues only this command's files: a foreign TSV, JSON or x_adv file is
    refused and left untouched."""
    path = tmp_path / name
    if content is None:
        torch.save({"x_adv": torch.zeros(1), "labels": torch.zeros(1)}, path)
    else:
        path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(UserError, match=match):
        evaluate_dataset(_linear(split), split, [0, 1], CONFIG, seed=0, out=tmp_path / "r.json", resume=True,
                         save_adv=tmp_path / "adv.pt", progress=False)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_chunk_record_shape_checks_and_partial_x_adv():
    rec = dict(indices=torch.tensor([1, 2]), labels=torch.tensor([0, 0]), clean=torch.tensor([T, T]),
               stages={"pgd": torch.tensor([T, F])}, rescored=torch.tensor([[T, T]]), seconds=0.0,
               attack_seconds={}, x_adv=torch.zeros(2, 1, 2, 2))
    assert len(ChunkRecord.from_state(rec)) == 2
    with pytest.raises(ValueError):
        ChunkRecord.from_state({**rec, "rescored": torch.tensor([[T, T, T]])})
    with pytest.raises(ValueError):
        ChunkRecord.from_state({**rec, "x_adv": torch.zeros(3, 1, 2, 2)})
    both = ChunkRecord.concat([ChunkRecord.from_state(rec), ChunkRecord.from_state({**rec, "x_adv": None})])
    assert both.x_adv is None and len(both) == 4


# ----------------------------------------------------------------------------- evaluation
class _Threshold(nn.Module):
    """Class 1 iff the mean pixel exceeds 0.5, else class 0; its gradient is zero, so PGD (L∞)
    leaves x_adv at its random start."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        hi = (m > 0.5).to(x.dtype)
        return torch.stack([1 - hi, hi], 1) + 0 * m[:, None]


def _starts(seed, indices, shape, eps):
    """The documented L∞ start of each example: uniform in [-eps, eps] from its own generator."""
    return torch.cat([(2 * torch.rand((1, *shape), generator=stream_generator(seed, "attack.example", i)) - 1) * eps
                      for i in indices])


def test_pgd_starts_come_from_each_examples_own_generator():
    """Six equal images at indices 10..15, evaluated in inner batches of 4: example ``i``'s
    start is drawn from stream ``attack.example`` of index ``i`` alone, whatever its batch; the
    verdict is taken on x_adv."""
    x, y, idx = torch.full((6, 1, 4, 4), 0.5), torch.zeros(6, dtype=torch.int64), list(range(10, 16))
    config = AttackConfig(eps=0.1, attack="pgd", steps=2, batch_size=4)
    res = evaluate(_Threshold(), x, y, config, seed=3, indices=idx)
    delta = _starts(3, idx, (1, 4, 4), 0.1)
    assert torch.allclose(res.x_adv - x, delta, atol=1e-6)
    survived = delta.flatten(1).mean(1) <= 0
    assert 0 < survived.sum() < 6                       # both outcomes occur
    assert res.clean.all() and res.stages["pgd"].tolist() == survived.tolist()
    assert res.robust.tolist() == survived.tolist() and res.rescored.shape == (1, 6)


def test_pgd_never_counts_a_clean_wrong_example_robust():
    """Label 1 on images the model calls 0: the random start moves some of them to class 1,
    yet an example wrong before the attack is never robust."""
    x, y = torch.full((6, 1, 4, 4), 0.5), torch.ones(6, dtype=torch.int64)
    config = AttackConfig(eps=0.1, attack="pgd", steps=1, batch_size=6)
    res = evaluate(_Threshold(), x, y, config, seed=3, indices=list(range(10, 16)))
    assert (res.x_adv.flatten(1).mean(1) > 0.5).any()   # x_adv classified correctly for some
    assert not res.clean.any() and not res.stages["pgd"].any() and not res.robust.any()


def _smoothed_problem():
    torch.manual_seed(0)
    model = LinearK(16, 3, seed=1)
    x = torch.rand(24, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    return model, x, y, AttackConfig(eps=0.2, attack="pgd", norm="L2", steps=1, batch_size=24, sigma=1.0,
                                     copies=1, rescores=3)


def test_smoothed_pgd_verdicts_do_not_depend_on_the_batch():
    """Each example's clean prediction, attack and re-scorings under noise are the same
    evaluated with 23 others or alone."""
    model, x, y, config = _smoothed_problem()
    idx = list(range(100, 124))
    full = evaluate(model, x, y, config, seed=4, indices=idx)
    for j in range(len(x)):
        one = evaluate(model, x[j:j + 1], y[j:j + 1], config, seed=4, indices=[idx[j]])
        assert one.clean.item() == full.clean[j].item()
        assert torch.allclose(one.x_adv[0], full.x_adv[j])
        assert one.rescored[:, 0].tolist() == full.rescored[:, j].tolist()
    assert 0 < full.clean.sum() < len(x)                  # the noise makes verdicts vary


def test_rescoring_noise_comes_from_stream_attack_rescore():
    model, x, y, config = _smoothed_problem()
    idx = list(range(100, 124))
    res = evaluate(model, x, y, config, seed=4, indices=idx)
    gens = [stream_generator(4, "attack.rescore", i) for i in idx]
    expected = rescore(SoftSmoothed(model, 1.0, 1), res.x_adv, y, repeats=3, batch_size=24, generators=gens)
    assert res.rescored.shape == (3, 24) and torch.equal(res.rescored, expected)
    assert not expected.all()


def test_smoothed_model_gets_sigma_m_and_the_batch_stream(monkeypatch):
    """The smoothed model wraps the base model with the config's sigma and m, its generator
    seeded from stream ``attack.batch`` of the first index, use 1."""
    seen = []

    def spy(model, sigma, m, generator=None):
        seen.append((sigma, m, generator.initial_seed()))
        return SoftSmoothed(model, sigma, m, generator=generator)

    monkeypatch.setattr(evaluation, "SoftSmoothed", spy)
    model, x, y, _ = _smoothed_problem()
    config = AttackConfig(eps=0.2, attack="pgd", norm="L2", steps=1, batch_size=8, sigma=0.5, copies=3)
    evaluate(model, x[:2], y[:2], config, seed=6, indices=[42, 7])
    assert seen == [(0.5, 3, stream_seed(6, "attack.batch", 42, 1) % 2**63)]


def test_autoattack_gets_its_options_and_the_seed_of_the_first_index(monkeypatch):
    seen = {}

    def fake(model, x, y, **kw):
        seen.update(kw)
        return AttackResult(x_adv=x, clean=torch.ones(len(x), dtype=torch.bool),
                            stages={"apgd-ce": torch.ones(len(x), dtype=torch.bool)})

    monkeypatch.setattr(evaluation, "run_autoattack", fake)
    x, y = torch.full((3, 1, 4, 4), 0.5), torch.zeros(3, dtype=torch.int64)
    config = AttackConfig(eps=0.1, version="custom", attacks=("apgd-ce", "square"), batch_size=3)
    evaluate(_Threshold(), x, y, config, seed=11, indices=[7, 2, 9])
    assert seen["seed"] == stream_seed(11, "attack.batch", 7, 0) % 2**31
    assert seen["attacks"] == ["apgd-ce", "square"] and seen["version"] == "custom"
    assert seen["eps"] == 0.1 and seen["norm"] == "Linf" and seen["batch_size"] == 3


def test_seed_helpers_follow_the_documented_streams():
    assert batch_seed(5, [8, 3], 1) == stream_seed(5, "attack.batch", 8, 1)
    assert batch_seed(5, [8, 3], 0) == stream_seed(5, "attack.batch", 8, 0)
    gens = example_generators(5, "attack.example", [8, 3], "cpu")
    assert [g.initial_seed() for g in gens] == [stream_seed(5, "attack.example", i) % 2**63 for i in (8, 3)]


def test_evaluate_refuses_indices_of_another_length():
    x, y = torch.full((3, 1, 4, 4), 0.5), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="indices"):
        evaluate(_Threshold(), x, y, AttackConfig(eps=0.1, attack="pgd"), seed=0, indices=[0, 1])


def test_rescores_default_and_override():
    assert AttackConfig(eps=0.1).n_rescores == 1
    assert AttackConfig(eps=0.1, sigma=0.25).n_rescores == 5
    assert AttackConfig(eps=0.1, sigma=0.25, rescores=2).n_rescores == 2
    assert AttackConfig(eps=0.1, rescores=3).n_rescores == 3


SHAPE = (1, 8, 8)  # d = 64: L2 radius of [0, 1]^d is 8, L1 is 64


@pytest.mark.parametrize("kw", [
    {"eps": 1.0, "attack": "pgd"},
    {"eps": 8.0, "attack": "pgd", "norm": "L2"},
    {"eps": 64.0, "norm": "L1"},
    {"eps": 0.1, "attack": "pgd", "copies": MAX_NOISE_DRAWS, "steps": MAX_STEPS, "rescores": MAX_RESCORES},
], ids=["linf-1", "l2-sqrt-d", "l1-d", "caps"])
def test_check_config_accepts_the_limits(kw):
    check_config(AttackConfig(**kw), SHAPE)


@pytest.mark.parametrize("kw, field", [
    ({"eps": 0.0, "attack": "pgd"}, "eps"),
    ({"eps": 8.01, "attack": "pgd", "norm": "L2"}, "eps"),
    ({"eps": 64.5, "norm": "L1"}, "eps"),
    ({"eps": 0.1, "attack": "pgd", "sigma": 0.0}, "sigma"),
    ({"eps": 0.1, "attack": "pgd", "copies": MAX_NOISE_DRAWS + 1}, "copies"),
    ({"eps": 0.1, "attack": "pgd", "steps": MAX_STEPS + 1}, "steps"),
    ({"eps": 0.1, "attack": "pgd", "rescores": MAX_RESCORES + 1}, "rescores"),
], ids=["eps-0", "l2-over", "l1-over", "sigma-0", "m-cap", "steps-cap", "rescores-cap"])
def test_check_config_refuses_past_the_limits(kw, field):
    with pytest.raises(FieldError) as e:
        check_config(AttackConfig(**kw), SHAPE)
    assert e.value.field == field
