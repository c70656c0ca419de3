"""Contract tests over the registries not covered elsewhere (datasets, models, methods,
perturbations, augmentations, recipes and confidence sequences have theirs): attacks, attack
evaluators, attack losses, table formats and export formats. Each entry must keep its promise:
x_adv inside the ball and the box, the model's mode and ``requires_grad`` restored, every row
of a table rendered, every export loadable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmaxup.attacks import ATTACKS, EVALUATORS, LOSSES, AttackConfig
from robustmaxup.certify import analysis
from robustmaxup.checkpoints import EXPORT_FORMATS, build_model_for, export_checkpoint, save_checkpoint


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.train()  # the attacks must put it in eval mode and give train mode back
    model[1].weight.requires_grad_(False)  # ... and restore each parameter's own flag
    return model


def _state(model: nn.Module):
    return [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)


ATTACK_KWARGS = {
    "pgd": dict(eps=0.1, norm="Linf", steps=3),
    "smooth_pgd": dict(eps=0.5, sigma=0.25, m=4, steps=3),
    "autoattack": dict(eps=0.1, norm="Linf", version="custom", attacks=["apgd-ce"], batch_size=6),
}


def test_every_attack_has_a_contract_case():
    assert sorted(ATTACKS.names()) == sorted(ATTACK_KWARGS)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_stays_in_ball_and_box_and_restores_the_model(name):
    model = _model()
    before = _state(model)
    x, y = _batch()
    kwargs = ATTACK_KWARGS[name]
    x_adv = ATTACKS.get(name)(model, x, y, **kwargs)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    if kwargs.get("norm", "L2") == "Linf":
        assert delta.abs().max() <= kwargs["eps"] + 1e-6
    else:
        assert delta.norm(dim=1).max() <= kwargs["eps"] + 1e-5
    assert _state(model) == before


EVALUATOR_CONFIGS = {
    "pgd": AttackConfig(eps=0.1, attack="pgd", steps=3, batch_size=4),
    "autoattack": AttackConfig(eps=0.1, attack="autoattack", version="custom", attacks=("apgd-ce",),
                               batch_size=4),
}


def test_every_evaluator_has_a_contract_case():
    assert sorted(EVALUATORS.names()) == sorted(EVALUATOR_CONFIGS)


@pytest.mark.parametrize("name", EVALUATORS.names())
def test_evaluator_flags_are_a_pointwise_worst_case(name):
    model = _model()
    before = _state(model)
    x, y = _batch()
    res = EVALUATORS.get(name)(model, x, y, EVALUATOR_CONFIGS[name], seed=0, indices=list(range(len(y))))
    assert res.x_adv.shape == x.shape and res.clean.shape == y.shape and res.clean.dtype == torch.bool
    robust = res.attack_robust
    assert not (robust & ~res.clean).any()  # robust implies clean-correct
    stages = list(res.stages.values())
    for earlier, later in zip(stages, stages[1:]):
        assert not (later & ~earlier).any()  # cumulative: never robust again after a break
    with torch.no_grad():
        model.eval()
        agrees = model(res.x_adv).argmax(1) == y
    assert torch.equal(agrees | ~robust, torch.ones_like(robust))  # x_adv re-scores as claimed
    model.train()
    assert _state(model) == before


@pytest.mark.parametrize("name", LOSSES.names())
def test_attack_loss_is_per_example_and_differentiable(name):
    logits = torch.randn(5, 10, requires_grad=True)
    y = torch.randint(0, 10, (5,))
    out = LOSSES.get(name)(logits, y)
    assert out.shape == (5,) and torch.isfinite(out).all()
    out.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _results(tmp_path):
    path = tmp_path / "a_b|c.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                    "0\t1\t1\t0.300000\t1\t0:00:01.000\n1\t2\t-1\t0.000000\t0\t0:00:01.000\n")
    return [analysis.read_certify_tsv(path)]


@pytest.mark.parametrize("fmt", analysis.TABLE_FORMATS.names())
def test_table_format_renders_every_row(tmp_path, fmt):
    results = _results(tmp_path)
    header, body = analysis.summary_rows(results, [0, 0.25])
    text = analysis.format_table(results, [0, 0.25], fmt)
    for row in body:
        assert row[1] in text  # every value appears
    assert "0.500" in text  # certified accuracy at r = 0: one of two rows


@pytest.mark.parametrize("fmt", EXPORT_FORMATS.names())
def test_export_format_loads_back(tmp_path, fmt):
    model = build_model_for("digits_cnn", "digits").eval()
    src = tmp_path / "m.pt"
    save_checkpoint(src, {"arch": "digits_cnn", "dataset": "digits", "num_classes": 10,
                          "model": model.state_dict(), "method": "gaussian", "hparams": {"sigma": 0.25}})
    out = export_checkpoint(src, tmp_path / f"out_{fmt}.pt", fmt)
    obj = torch.load(out, weights_only=True)
    state = obj["state_dict"] if fmt == "cohen" else obj
    target = build_model_for("digits_cnn", "digits")
    net_state = {k.split(".", 1)[1]: v for k, v in state.items()} if fmt == "cohen" else None
    if fmt == "cohen":
        target.net.load_state_dict(net_state, strict=True)
    else:
        target.load_state_dict(state, strict=True)
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(target.eval()(x), model(x))
