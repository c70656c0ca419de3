"""Details of the training loop, its run state and its checkpoints (``robustmaxup.train.loop``,
``.state``, ``.checkpointing``), found missing by a mutation audit: per-epoch statistics with
hand-computed values, the chunking of a loader batch, the optimiser step (zeroed gradients, one
step), train/eval modes, the evaluation streams and certified accuracy, the splits and loaders a
run builds, resume (what is restored, what is refused) and the fields of last.pt/best.pt.

Every run here is tiny (digits, a few batches of a 100-image subset)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch

from classifiers import Constant
from robustmaxup.certify import bounds
from robustmaxup.errors import UserError
from robustmaxup.methods import LossOutput
from robustmaxup.runtime.checks import FieldError
from robustmaxup.train import PerturbationSpec, TrainConfig, loop, setup, train
from robustmaxup.train import checkpointing, state as state_mod
from robustmaxup.train.config import RESUMABLE_CHANGES

from tests.fakes import KilledAt, number_provenance


def _cfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", arch="digits_cnn", method="gaussian", method_args={"sigma": 0.25},
                epochs=2, batch=30, lr=0.05, lr_step=1, out=str(out), quiet=True, max_train=100,
                val_size=10, max_eval=10)
    base.update(kw)
    return TrainConfig(**base)


def _scripted_val(monkeypatch, vals):
    """``evaluate`` returns ``vals[epoch]`` on val and 0.5 on test (the epochs run without it)."""
    monkeypatch.setattr(loop, "evaluate",
                        lambda run, name: vals[run.state.epoch] if name == "val" else 0.5)


# ----------------------------------------------------------------------------- one epoch
def test_train_epoch_weights_loss_by_examples_and_accuracy_by_targets(tmp_path, monkeypatch):
    """loss = sum(step loss x examples) / examples; train_acc = right argmax / target rows (a
    step may have more target rows than examples, or no logits at all)."""
    with setup(_cfg(tmp_path / "r")) as run:
        steps = len(run.loaders["train"])                      # 90 images / 30: 3 batches
        assert steps == 3

        def scripted(run_, x, y):
            logits = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 0.0]] * 2)   # argmax 1,1,1,1,0,0
            targets = torch.tensor([1, 1, 1, 0, 1, 0])                     # 3 + 1 right of 6
            return [(2, LossOutput(torch.tensor(1.0), logits, targets)),
                    (3, LossOutput(torch.tensor(4.0), None, None))]

        monkeypatch.setattr(loop, "train_batch", scripted)
        m = loop.train_epoch(run, 0)
    assert m["loss"] == pytest.approx((1.0 * 2 + 4.0 * 3) / 5)                 # 2.8
    assert m["train_acc"] == pytest.approx(4 / 6)
    assert m["img_per_s"] * m["epoch_seconds"] == pytest.approx(5 * steps)      # examples, not targets


def test_train_epoch_sets_train_mode_lr_of_every_group_loader_epoch_and_hooks(tmp_path, monkeypatch):
    """Whatever mode the model was left in, the epoch trains in train mode, at its scheduled lr
    in every parameter group, on the loader's order of that epoch, after the method's and the
    weight perturbation's epoch hooks saw (epoch, epochs)."""
    cfg = _cfg(tmp_path / "r", epochs=4, lr_step=2, perturbation=PerturbationSpec("amp", {"eps": 0.1}))
    with setup(cfg) as run:
        run.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 9.0})
        seen, hooks = [], []
        monkeypatch.setattr(run.method, "on_epoch_start", lambda e, n: hooks.append(("method", e, n)))
        monkeypatch.setattr(run.perturbation, "on_epoch_start", lambda e, n: hooks.append(("perturbation", e, n)))

        def record(run_, x, y):
            seen.append((run.model.training, [g["lr"] for g in run.optimizer.param_groups],
                         run.loaders["train"].epoch))
            return [(len(y), LossOutput(torch.tensor(0.0)))]

        monkeypatch.setattr(loop, "train_batch", record)
        run.model.eval()
        loop.train_epoch(run, 3)
    assert hooks == [("method", 3, 4), ("perturbation", 3, 4)]
    assert all(mode for mode, _, _ in seen) and len(seen) == 3
    assert all(lrs == pytest.approx([0.005, 0.005]) and epoch == 3 for _, lrs, epoch in seen)  # 0.05 * 0.1^(3//2)


# ----------------------------------------------------------------------------- steps
def test_reference_structure_trains_consecutive_chunks_with_their_own_labels(tmp_path, monkeypatch):
    """SmoothAdv with 2 copies takes 2 steps per loader batch, each on the next len//2 examples
    and their labels (a remainder dropped); "joint" takes one step on the whole batch."""
    calls = []

    def record(run, x, y):
        calls.append((x.clone(), y.clone()))
        return LossOutput(torch.tensor(1.0))

    monkeypatch.setattr(loop, "train_step", record)
    x = torch.arange(7.0).view(7, 1, 1, 1)
    y = torch.arange(7) + 10
    method_args = {"copies": 2, "attack_steps": 1}
    with setup(_cfg(tmp_path / "ref", method="smoothadv", method_args=method_args)) as run:
        out = loop.train_batch(run, x, y)
    assert [n for n, _ in out] == [3, 3]
    assert [c[0].flatten().tolist() for c in calls] == [[0, 1, 2], [3, 4, 5]]
    assert [c[1].tolist() for c in calls] == [[10, 11, 12], [13, 14, 15]]
    calls.clear()
    with setup(_cfg(tmp_path / "joint", method="smoothadv", method_args=method_args,
                    step_structure="joint")) as run:
        out = loop.train_batch(run, x, y)
    assert [n for n, _ in out] == [7] and calls[0][1].tolist() == y.tolist()


@pytest.mark.parametrize("perturbation", [None, PerturbationSpec("amp", {"eps": 0.1})])
def test_train_step_zeroes_stale_gradients_and_steps_once(tmp_path, perturbation):
    """The step applies -lr x (this batch's gradient) once: a gradient left in p.grad does
    not leak in (plain SGD, no momentum or decay, so the update is exactly -lr * grad)."""
    with setup(_cfg(tmp_path / "r", momentum=0.0, weight_decay=0.0, perturbation=perturbation)) as run:
        for g in run.optimizer.param_groups:
            g["lr"] = 0.1
        x, y = next(iter(run.loaders["train"]))
        ref = copy.deepcopy(run.model)
        gen = torch.Generator().set_state(run.state.generator.get_state())
        loss = run.method.loss(ref, run.method.prepare(ref, x, y, generator=gen)).loss
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        before = [p.detach().clone() for p in run.model.parameters()]
        for p in run.model.parameters():
            p.grad = torch.full_like(p, 100.0)
        calls = []
        step = run.optimizer.step
        run.optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
        loop.train_step(run, x, y)
        after = [p.detach() for p in run.model.parameters()]
    assert len(calls) == 1
    if perturbation is None:   # AMP's gradient is taken at w + v: only its size is checked there
        for b, a, g in zip(before, after, grads):
            assert torch.allclose(a, b - 0.1 * g, atol=1e-6)
    else:
        moved = max((a - b).abs().max().item() for a, b in zip(after, before))
        assert 0 < moved < 1.0   # AMP steps after restoring w: a step inside would be undone


def test_awp_steps_the_optimiser_exactly_once(tmp_path):
    with setup(_cfg(tmp_path / "r", perturbation=PerturbationSpec("awp", {"gamma": 0.01}))) as run:
        x, y = next(iter(run.loaders["train"]))
        calls = []
        step = run.optimizer.step
        run.optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
        loop.train_step(run, x, y)
    assert len(calls) == 1


def test_a_bad_perturbation_argument_is_named_by_its_flag():
    with pytest.raises(FieldError) as e:
        loop.build_perturbation(PerturbationSpec("awp", {"gamma": -1.0}))
    assert e.value.field == "awp_gamma"
    assert loop.build_perturbation(None) is None


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("mode", [True, False])
def test_evaluate_runs_in_eval_mode_on_its_own_stream_and_restores_the_mode(tmp_path, monkeypatch, mode):
    """The mean of method.evaluate over the split, in eval mode, with noise from eval.<name>;
    the model is left in the mode it was in."""
    from robustmaxup.runtime.seeds import stream_generator

    with setup(_cfg(tmp_path / "r", val_size=12, max_eval=14, eval_batch=5)) as run:
        calls = []

        def fake(model, x, y, generator):
            calls.append((model.training, generator.get_state() if not calls else None))
            return (y % 2 == 0)

        monkeypatch.setattr(run.method, "evaluate", fake)
        run.model.train(mode)
        for name in ("val", "test"):
            calls.clear()
            labels = run.splits[name].labels
            assert loop.evaluate(run, name) == pytest.approx((labels % 2 == 0).double().mean().item())
            assert len(calls) == math.ceil(len(labels) / 5) and not any(t for t, _ in calls)
            assert torch.equal(calls[0][1], stream_generator(0, f"eval.{name}").get_state())
            assert run.model.training is mode


def test_evaluate_uses_certified_accuracy_with_an_eval_radius(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "certified_accuracy", lambda run, loader, gen: 0.125)
    with setup(_cfg(tmp_path / "r", eval_radius=0.25, eval_n=100)) as run:
        assert loop.evaluate(run, "val") == 0.125
    with setup(_cfg(tmp_path / "r2", max_eval=0)) as run:
        assert math.isnan(loop.evaluate(run, "test"))


def _fake_run(*, n, radius, alpha, sigma, eval_batch):
    cfg = SimpleNamespace(precision="fp32", eval_batch=eval_batch, eval_n=n, eval_alpha=alpha,
                          eval_radius=radius)
    return SimpleNamespace(cfg=cfg, model=Constant(3, 10), method=SimpleNamespace(hparams=lambda: {"sigma": sigma}),
                           splits={"train": SimpleNamespace(info=SimpleNamespace(num_classes=10))})


@pytest.mark.parametrize("eval_batch", [1, 250])
def test_certified_accuracy_uses_the_configured_radius_n_alpha_and_sigma(eval_batch):
    """A classifier that always says 3 gets n of n votes for label 3: an image counts iff its
    label is 3 and n unanimous votes certify the radius (bounds.min_samples_to_certify_radius
    is the least n that can). 5 of the 8 images here have label 3."""
    x = torch.rand(8, 1, 2, 2)
    y = torch.tensor([3, 3, 1, 3, 3, 0, 3, 2])
    loader = [(x[:5], y[:5]), (x[5:], y[5:])]
    r, alpha, sigma = 0.25, 0.01, 0.5
    need = bounds.min_samples_to_certify_radius(r, sigma, alpha)
    assert need > bounds.min_samples_to_certify_radius(0.0, sigma, alpha) + 1           # the radius matters
    assert need < bounds.min_samples_to_certify_radius(r, sigma, 0.001)                 # and alpha
    assert need < bounds.min_samples_to_certify_radius(r, 0.25, alpha)                  # and sigma
    gen = torch.Generator().manual_seed(0)
    run = _fake_run(n=need, radius=r, alpha=alpha, sigma=sigma, eval_batch=eval_batch)
    assert loop.certified_accuracy(run, loader, gen) == 5 / 8
    run = _fake_run(n=need - 1, radius=r, alpha=alpha, sigma=sigma, eval_batch=eval_batch)
    assert loop.certified_accuracy(run, loader, gen) == 0.0


# ----------------------------------------------------------------------------- the epoch loop
def test_history_records_each_epochs_lr_cleaned_values_and_the_summary_is_the_last(tmp_path):
    """lr is the epoch's own (step every epoch: 0.05, 0.005); no validation split reads None
    (not NaN) in the history and metrics.jsonl; the summary's metrics are the last epoch's."""
    summary = train(_cfg(tmp_path / "r", val_size=0))
    hist = summary["history"]
    assert [m["epoch"] for m in hist] == [1, 2] and summary["metrics"]["epoch"] == 2
    assert [m["lr"] for m in hist] == pytest.approx([0.05, 0.005])
    assert all(m["val"] is None and isinstance(m["test"], float) for m in hist)
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["val"] for l in lines] == [None, None] and "NaN" not in "".join(lines)
    assert summary["metrics"]["test"] == hist[1]["test"] and summary["best"] is None
    assert not (tmp_path / "r" / "best.pt").exists()


def test_an_infinite_loss_is_divergence(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_epoch", lambda run, epoch, progress=False: {
        "loss": float("inf"), "train_acc": 0.0, "img_per_s": 1.0, "epoch_seconds": 1.0})
    with pytest.raises(FieldError) as e:
        train(_cfg(tmp_path / "r"))
    assert e.value.field == "lr" and "diverged at epoch 1" in str(e.value)


def test_a_failure_after_a_checkpoint_keeps_the_run_even_without_best_pt(tmp_path, monkeypatch):
    """With no validation split there is no best.pt: last.pt alone makes the run resumable."""
    KilledAt(monkeypatch, loop, "train_epoch", at=2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path / "r", val_size=0))
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["config.json", "last.pt", "metrics.jsonl"]


def test_a_failed_resume_into_a_directory_with_other_files_removes_nothing(tmp_path, monkeypatch):
    """Only a run that began in an empty directory cleans up after itself."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(loop, "train_epoch", lambda run, epoch, progress=False: {
        "loss": float("nan"), "train_acc": 0.0, "img_per_s": 1.0, "epoch_seconds": 1.0})
    with pytest.raises(FieldError):
        train(_cfg(out, resume=True))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "notes.txt"]


def test_copies_memory_check_counts_every_copy(tmp_path, monkeypatch):
    """MaxUp's forward holds batch x copies images: 30 x 3 digits images of 1x8x8 float32."""
    from robustmaxup.runtime import limits

    needs = []
    monkeypatch.setattr(limits, "check_memory", lambda field, need, device, what="": needs.append((field, need)))
    with setup(_cfg(tmp_path / "r", method="maxup", method_args={"copies": 3})):
        pass
    assert needs == [("copies", limits.batch_bytes(90, (1, 8, 8)))]
    assert limits.batch_bytes(90, (1, 8, 8)) > limits.batch_bytes(30, (1, 8, 8))


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_fields_and_best_selection_keeps_the_first_of_equal_scores(tmp_path, monkeypatch):
    """best.pt is the first epoch with the highest validation score (a tie does not move it);
    last.pt says what it is and carries the last epoch's lr, metrics and the full history."""
    _scripted_val(monkeypatch, [0.5, 0.75, 0.75])
    train(_cfg(tmp_path / "r", epochs=3))
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert best["best"] == {"epoch": 2, "value": 0.75, "metric": "validation noisy accuracy (sigma=0.25)",
                            "val_size": 10}
    assert best["epoch"] == 2 and best["selection"].endswith("on 10 held-out training images, epoch 2")
    assert last["selection"] == "last epoch" and last["best"] == best["best"] and last["epoch"] == 3
    assert last["scheduler"] == {"schedule": "step", "lr": pytest.approx(0.05 * 0.01)}   # epoch 3's lr
    assert best["scheduler"]["lr"] == pytest.approx(0.005)
    assert last["metrics"]["epoch"] == 3 and last["metrics"]["val"] == 0.75
    assert [m["epoch"] for m in last["history"]] == [1, 2, 3]
    assert (last["in_channels"], last["num_classes"]) == (1, 10)


def _one_epoch_then_resume(tmp_path, monkeypatch, damage=None, **kw):
    """Train 1 epoch, optionally ``damage(ckpt)`` last.pt, then set up the resume (2 epochs)."""
    _scripted_val(monkeypatch, [0.75, 0.5])
    out = tmp_path / "r"
    train(_cfg(out, epochs=1, method="maxup", method_args={"copies": 2}, **kw))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    if damage is not None:
        damage(ckpt)
        torch.save(ckpt, out / "last.pt")
    return ckpt, setup(_cfg(out, epochs=2, method="maxup", method_args={"copies": 2}, resume=True, **kw))


def test_resume_restores_epoch_best_history_optimiser_and_noise_generator(tmp_path, monkeypatch):
    ckpt, run = _one_epoch_then_resume(tmp_path, monkeypatch)
    with run:
        assert run.state.epoch == 1 and run.state.best == ckpt["best"] and run.state.best["epoch"] == 1
        assert [m["epoch"] for m in run.state.history] == [1]
        assert torch.equal(run.state.generator.get_state(), ckpt["rng"]["generators"][0])
        state = run.optimizer.state_dict()["state"]
        assert state and all(torch.equal(state[k]["momentum_buffer"], v["momentum_buffer"])
                             for k, v in ckpt["optimizer"]["state"].items())
    summary = train(_cfg(tmp_path / "r", epochs=2, method="maxup", method_args={"copies": 2}, resume=True))
    assert [m["epoch"] for m in summary["history"]] == [1, 2]
    assert summary["best"]["epoch"] == 1        # epoch 2 validated worse: best.pt stays epoch 1's
    assert torch.load(tmp_path / "r" / "best.pt", weights_only=True)["epoch"] == 1


def test_resuming_a_finished_run_with_as_many_epochs_trains_nothing(tmp_path, monkeypatch):
    out = tmp_path / "r"
    train(_cfg(out, epochs=2))
    before = torch.load(out / "last.pt", weights_only=True)["model"]
    monkeypatch.setattr(loop, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    summary = train(_cfg(out, epochs=2, resume=True))
    assert [m["epoch"] for m in summary["history"]] == [1, 2] and summary["metrics"]["epoch"] == 2
    after = torch.load(out / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("schedule, epochs, warned", [
    ("piecewise", 3, True), ("cosine", 3, True), ("piecewise", 2, False), ("step", 3, False)])
def test_a_resume_that_stretches_the_schedule_warns(tmp_path, monkeypatch, caplog, schedule, epochs, warned):
    """piecewise/cosine read ``epochs``: resuming a 2-epoch run with 3 gives epoch 2 another rate
    (cosine: lr 0.05 * 0.5 planned, 0.05 * 0.75 now), so it says so; the step
    schedule and an unchanged length do not."""
    out = tmp_path / "r"
    train(_cfg(out, epochs=2, schedule=schedule))
    monkeypatch.setattr(loop, "train_epoch", lambda *a, **k: pytest.fail("trained again"))
    with caplog.at_level("WARNING", logger="robustmaxup"):
        with contextlib.suppress(BaseException):   # only the warning matters here
            train(_cfg(out, epochs=epochs, schedule=schedule, resume=True))
    stretched = [r for r in caplog.records if "schedule is stretched" in r.getMessage()]
    assert len(stretched) == warned
    if warned:
        assert f"resume=True with epochs={epochs} instead of 2" in stretched[0].getMessage()

def test_resume_accepts_a_checkpoint_without_a_config(tmp_path, monkeypatch):
    def no_config(ckpt):
        ckpt["config"] = None

    _, run = _one_epoch_then_resume(tmp_path, monkeypatch, no_config)
    with run:
        assert run.state.epoch == 1


def _set(key, value):
    def damage(ckpt):
        ckpt[key] = value
    return damage


def _rng(generators):
    def damage(ckpt):
        ckpt["rng"]["generators"] = generators(ckpt["rng"]["generators"])
    return damage


@pytest.mark.parametrize("damage, needle", [
    (_set("optimizer", None), "no valid optimizer"),
    (_set("best", 0.5), "no valid best"),
    (_set("history", [{"epoch": 1}, 3]), "no valid history"),
    (_rng(lambda g: []), "no valid rng"),
    (_rng(lambda g: g * 2), "made with 2 process(es), now 1"),
    (lambda c: c["config"].update(mystery_setting=3), "mystery_setting (3, now None)"),
], ids=["optimizer", "best", "history-item", "no-generators", "two-ranks", "unknown-setting"])
def test_resume_refuses_a_damaged_or_foreign_checkpoint(tmp_path, monkeypatch, damage, needle):
    with pytest.raises(UserError) as e:
        _one_epoch_then_resume(tmp_path, monkeypatch, damage)
    assert needle in str(e.value)


def test_read_metrics_stops_at_the_first_unreadable_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    assert checkpointing.read_metrics(tmp_path) == [{"epoch": 1}]
    assert checkpointing.read_metrics(tmp_path / "nowhere") == []


def test_config_json_lists_the_values_given_over_the_recipe(tmp_path):
    cfg = TrainConfig.from_recipe("cohen", dataset="digits", arch="digits_cnn", out=str(tmp_path / "r"),
                                  lr=0.0123, epochs=1)
    run = SimpleNamespace(out=tmp_path, record=cfg.record({"sigma": 0.25}), state=SimpleNamespace(sessions=[]))
    checkpointing.write_config(run, {"git": "x"})
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["recipe_overrides"]["lr"]["value"] == 0.0123
    assert written["recipe_overrides"]["lr"]["recipe"] != 0.0123
    assert written["provenance"] == {"git": "x"} and written["lr"] == 0.0123


# ----------------------------------------------------------------------------- the run's parts
def test_splits_subset_hold_out_and_test_images(tmp_path):
    """max_train images drawn with the train.subset stream, a val hold-out drawn with
    train.val_split (default: a tenth), max_eval test images spread over the test split."""
    from robustmaxup.data import load_split, spread_indices, train_val_split
    from robustmaxup.runtime.seeds import stream_generator, stream_seed

    with setup(_cfg(tmp_path / "r", val_size=-1, max_eval=13, seed=3)) as run:
        s = run.splits
        full = load_split("digits", "train")
        idx = torch.randperm(len(full), generator=stream_generator(3, "train.subset"))[:100].sort().values
        train_ref, val_ref = train_val_split(full.subset(idx), 10, stream_seed(3, "train.val_split"))
        assert (len(s["train"]), len(s["val"]), len(s["test"])) == (90, 10, 13)
        assert torch.equal(s["train"].labels, train_ref.labels) and torch.equal(s["val"].images, val_ref.images)
        test = load_split("digits", "test")
        assert torch.equal(s["test"].images, test.images[spread_indices(len(test), 13)])


def test_loaders_drop_the_short_batch_and_evaluate_in_order_without_augmentation(tmp_path):
    with setup(_cfg(tmp_path / "r", batch=40, eval_batch=4, max_eval=10)) as run:
        assert len(run.loaders["train"]) == 2                                  # 90 images: 40 + 40
        assert sum(len(y) for _, y in run.loaders["train"]) == 80
        batches = list(run.loaders["test"])
        assert [len(y) for _, y in batches] == [4, 4, 2]
        x = torch.cat([b[0] for b in batches])
        assert torch.equal(x, run.splits["test"].images.float() / 255)


def test_run_parts_follow_the_config(tmp_path):
    """Model init from the train.init stream, the noise generator from train.noise, Nesterov,
    bf16 only when asked (or auto on CUDA)."""
    from robustmaxup.models import build_model
    from robustmaxup.runtime.seeds import seed_everything, stream_generator, stream_seed

    with setup(_cfg(tmp_path / "r", nesterov=True, precision="auto", seed=5)) as run:
        assert run.optimizer.param_groups[0]["nesterov"] is True
        assert torch.equal(run.state.generator.get_state(), stream_generator(5, "train.noise", 0).get_state())
        seed_everything(stream_seed(5, "train.init"))
        info = run.splits["train"].info
        ref = build_model("digits_cnn", 10, in_channels=1, mean=tuple(info.mean), std=tuple(info.std))
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), run.model.state_dict().values()))
        assert run.bf16 is False and isinstance(run.autocast, contextlib.nullcontext)
    for precision, bf16 in (("bf16", True), ("fp32", False)):
        fake = SimpleNamespace(cfg=SimpleNamespace(precision=precision), device=torch.device("cpu"))
        assert state_mod.Run.bf16.fget(fake) is bf16


@pytest.mark.parametrize("kw, ok", [
    (dict(batch=90, val_size=10), True),                          # a batch of the whole training split
    (dict(batch=91, val_size=9), True),
    (dict(val_size=100), False),                                  # nothing left to train on
    (dict(method="smoothadv", method_args={"copies": 2, "attack_steps": 1}, batch=2), True),
    (dict(method="smoothadv", method_args={"copies": 4, "attack_steps": 1}, batch=2,
          step_structure="joint"), True),
])
def test_step_and_split_bounds(tmp_path, kw, ok):
    cfg = _cfg(tmp_path / "r", **kw)
    if ok:
        with setup(cfg):
            pass
    else:
        with pytest.raises(FieldError) as e:
            setup(cfg)
        assert e.value.field == "val_size"


@pytest.mark.parametrize("kw, field", [
    (dict(method="standard", method_args={}, eval_radius=0.25), "eval_radius"),   # not smoothing
    (dict(method="mixup", method_args={}, eval_radius=0.25), "eval_radius"),
    (dict(eval_radius=0.25, eval_n=40, val_size=0), None),        # 40 is the least n; test images suffice
    (dict(eval_radius=0.25, eval_n=40, max_eval=0), None),
])
def test_eval_radius_checks(tmp_path, kw, field):
    cfg = _cfg(tmp_path / "r", **kw)
    if field is None:
        with setup(cfg):
            pass
    else:
        with pytest.raises(FieldError) as e:
            setup(cfg)
        assert e.value.field == field


def test_metric_names():
    from robustmaxup.methods import build_method

    cfg = _cfg("unused", eval_radius=0.25, eval_n=200, eval_alpha=0.01)
    assert state_mod.metric_name(build_method("gaussian", sigma=0.5)) == "noisy accuracy (sigma=0.5)"
    assert state_mod.metric_name(build_method("gaussian", sigma=0.5), cfg) == \
        "certified accuracy at r=0.25 (sigma=0.5, n=200, alpha=0.01)"
    assert state_mod.metric_name(build_method("standard")) == "clean accuracy"
    pgd = build_method("pgd_at")
    hp = pgd.hparams()
    assert state_mod.metric_name(pgd) == \
        f"PGD-{hp['eval_steps']} {hp['norm']} eps={hp['attack_eps']:.4g} robust accuracy"


def test_run_directory_checks(tmp_path):
    """A directory holding only a (stale) lock file is empty; a symlinked run file is not a
    run directory's; a directory changed between the check and the lock is refused."""
    out = tmp_path / "r"
    out.mkdir()
    (out / state_mod.LOCK_FILE).write_text("")
    assert state_mod.check_out_dir(_cfg(out)) == out
    (out / "elsewhere.pt").write_text("x")
    (out / "last.pt").symlink_to(out / "elsewhere.pt")
    with pytest.raises(FieldError, match="not a regular file"):
        state_mod.check_out_dir(_cfg(out, resume=True))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    lock = state_mod.RunDirLock(fresh)
    assert lock.started_empty
    (fresh / "intruder.txt").write_text("x")
    with pytest.raises(UserError, match="changed while this run started"):
        lock.acquire()
    assert not state_mod.RunDirLock(fresh).started_empty


# --------------------------------------------------------------------------------------------
# Sessions: each call that trained a run, with its provenance
# --------------------------------------------------------------------------------------------


def _sessions(out):
    return (json.loads((out / "config.json").read_text())["sessions"],
            torch.load(out / "last.pt", weights_only=True)["sessions"])


def test_each_call_that_trains_is_a_session_in_config_json_and_the_checkpoint(tmp_path, monkeypatch):
    """A run trained over two calls lists both: the epoch each began from, the settings a resume
    may change, and each call's own provenance (config.json's top-level one is the latest)."""
    number_provenance(monkeypatch, loop)
    out = tmp_path / "r"
    train(_cfg(out, epochs=1))
    train(_cfg(out, epochs=2, device="cpu", resume=True))
    in_config, in_ckpt = _sessions(out)
    assert in_config == in_ckpt == [
        {"from_epoch": 0, "epochs": 1, "device": "auto", "workers": 4, "provenance": {"call": 1}},
        {"from_epoch": 1, "epochs": 2, "device": "cpu", "workers": 4, "provenance": {"call": 2}},
    ]
    assert json.loads((out / "config.json").read_text())["provenance"] == {"call": 2}


def test_a_finished_run_resumed_adds_no_session_and_rewrites_nothing(tmp_path, monkeypatch):
    number_provenance(monkeypatch, loop)
    out = tmp_path / "r"
    train(_cfg(out, epochs=1))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    train(_cfg(out, epochs=1, resume=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "config.json").unlink()  # written again, but the call trained nothing: no session
    train(_cfg(out, epochs=1, resume=True))
    in_config, in_ckpt = _sessions(out)
    assert in_config == in_ckpt and [s["provenance"] for s in in_ckpt] == [{"call": 1}]


def test_a_call_killed_before_its_first_checkpoint_is_no_session_of_the_run(tmp_path, monkeypatch):
    """The checkpoint is the record: a resumed call that saved no epoch leaves only config.json
    naming it, and the next call's list drops it."""
    number_provenance(monkeypatch, loop)
    out = tmp_path / "r"
    train(_cfg(out, epochs=1))
    killed = KilledAt(monkeypatch, loop, "train_epoch", at=1)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(out, epochs=2, resume=True))
    killed.disarm()
    in_config, in_ckpt = _sessions(out)
    assert [s["provenance"] for s in in_config] == [{"call": 1}, {"call": 2}]
    assert [s["provenance"] for s in in_ckpt] == [{"call": 1}]
    train(_cfg(out, epochs=2, resume=True))
    in_config, in_ckpt = _sessions(out)
    assert in_config == in_ckpt and [(s["from_epoch"], s["provenance"]) for s in in_ckpt] == [
        (0, {"call": 1}), (1, {"call": 3})]


def test_a_checkpoint_from_before_sessions_resumes_with_the_new_calls_listed(tmp_path, monkeypatch):
    number_provenance(monkeypatch, loop)
    out = tmp_path / "r"
    train(_cfg(out, epochs=1))
    ckpt = torch.load(out / "last.pt", weights_only=True)
    del ckpt["sessions"]
    torch.save(ckpt, out / "last.pt")
    train(_cfg(out, epochs=2, resume=True))
    assert [(s["from_epoch"], s["provenance"]) for s in _sessions(out)[1]] == [(1, {"call": 2})]


def test_session_settings_are_the_ones_a_resume_may_change():
    assert set(checkpointing.SESSION_SETTINGS) == {"epochs", "device", "workers"}
    assert set(checkpointing.SESSION_SETTINGS) <= RESUMABLE_CHANGES
