"""Details of robustmaxup.attacks that a mutation audit found untested: each test kills at least one
mutant that survives the rest of the suite (named in its docstring). CPU, tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmaxup.attacks import pgd, smooth_pgd, soft_smoothed_log_probs
from robustmaxup.attacks._core import margin_loss
from robustmaxup.errors import UserError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)).eval()


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(1)
    return 0.2 + 0.6 * torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


class _Sign(nn.Module):
    """Two logits ``(-s z, s z)``, ``z = w·x - 32 * 0.5``, ``w = 1``: every input gradient
    coordinate has the same sign."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.w = nn.Parameter(torch.ones(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.scale * (x.flatten(1) @ self.w.to(x.dtype) - 32.0)
        return torch.stack([-z, z], 1)


def test_margin_loss_closed_form():
    """Kills: margin sign flipped; true class not excluded from the max."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0]])
    assert margin_loss(logits, torch.tensor([1, 0])).tolist() == [-1.0, -5.0]
    assert margin_loss(logits, torch.tensor([0, 2])).tolist() == [2.0, 5.0]


def test_pgd_documented_defaults_steps_and_random_start():
    """Kills: default ``steps`` != 10; default ``random_start`` False; ``random_start`` ignored."""
    model, (x, y) = _mlp(), _batch()
    run = lambda **kw: pgd(model, x, y, eps=0.1, generator=_gen(3), **kw)  # noqa: E731
    default = run()
    assert torch.equal(default, run(steps=10, random_start=True))
    assert not torch.equal(default, run(steps=9))
    assert not torch.equal(default, run(random_start=False))
    assert not torch.equal(run(random_start=True), run(random_start=False))


def test_pgd_is_unaffected_by_the_callers_grad_mode_and_autocast():
    """The attack turns gradients on and autocast off itself (attack_mode).
    Kills: ``torch.enable_grad()`` dropped; ``autocast(enabled=False)`` dropped."""
    model, (x, y) = _mlp(), _batch()
    ref = pgd(model, x, y, eps=0.1, norm="L2", steps=3, random_start=False)
    with torch.no_grad():
        assert torch.equal(pgd(model, x, y, eps=0.1, norm="L2", steps=3, random_start=False), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(pgd(model, x, y, eps=0.1, norm="L2", steps=3, random_start=False), ref)


def test_pgd_accumulates_steps_in_fp32_for_bf16_inputs():
    """At 0.5 bf16's spacing is 2**-8, so a bf16 iterate cannot take 0.001-steps (0.501 rounds
    back to 0.5); the fp32 iterate moves 10 * 0.001 and the bf16 answer is 0.5 ± 0.01 rounded.
    Kills: work dtype not promoted to fp32; result not cast back to the input's dtype."""
    model = _Sign().bfloat16()
    x = torch.full((2, 1, 8, 8), 0.5, dtype=torch.bfloat16)
    y = torch.tensor([0, 1])
    out = pgd(model, x, y, eps=0.05, steps=10, step_size=0.001, random_start=False)
    assert out.dtype == torch.bfloat16
    up, down = torch.tensor([0.51, 0.49]).bfloat16()         # 0.5 ± 10 * 0.001, rounded once
    assert (out[0] == up).all() and (out[1] == down).all()     # y = 0: the attack raises z


def test_check_unit_range_rejects_nan():
    """Kills: the NaN test (``lo != lo``) dropped from check_unit_range."""
    model, (x, y) = _mlp(), _batch(2)
    x[1, 0, 3, 3] = float("nan")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        pgd(model, x, y, eps=0.1, steps=1)


def test_smooth_pgd_draws_sigma_scaled_noise_from_the_generator():
    """Without ``noise``, the m draws are ``sigma * N(0, I)`` from ``generator``, taken once.
    Kills: sigma not applied to the drawn noise; noise redrawn every step."""
    model, (x, y) = _mlp(), _batch()
    m, sigma = 4, 0.25
    drawn = smooth_pgd(model, x, y, eps=0.5, sigma=sigma, m=m, steps=3, generator=_gen(5))
    noise = torch.randn((m, *x.shape), generator=_gen(5)) * sigma
    given = smooth_pgd(model, x, y, eps=0.5, sigma=sigma, m=m, steps=3, noise=noise)
    assert torch.equal(drawn, given)


def test_smooth_pgd_random_start_and_train_mode_are_honoured():
    """Kills: ``random_start`` ignored; ``train_mode`` not passed on to attack_mode."""
    model, (x, y) = _mlp(), _batch()
    noise = torch.randn((2, *x.shape), generator=_gen(0)) * 0.25
    kw = dict(eps=0.5, sigma=0.25, m=2, steps=2, noise=noise)
    cold = smooth_pgd(model, x, y, **kw)
    warm = smooth_pgd(model, x, y, **kw, random_start=True, generator=_gen(1))
    assert not torch.equal(cold, warm)
    assert ((warm - x).flatten(1).norm(dim=1) <= 0.5 + 1e-6).all()
    seen = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    smooth_pgd(model, x, y, **kw, train_mode=True)
    assert seen and all(seen) and not model.training


def test_soft_smoothed_log_probs_floor_keeps_a_saturated_attack_finite():
    """p_y underflows to exactly 0 (logit gap ~400): log is floored at log(1e-20) as in SmoothAdv
    (code/attacks.py:158), so the gradient is 0, the step is 0 and x_adv == x, not NaN.
    Kills: the ``clamp_min(1e-20)`` floor dropped."""
    model = _Sign(scale=40.0)
    x = torch.full((3, 1, 8, 8), 0.9)                      # z = 40 * (57.6 - 32) ≈ 1024
    y = torch.zeros(3, dtype=torch.long)                    # the class with probability 0
    noise = torch.randn((4, *x.shape), generator=_gen(0)) * 0.01
    lp = soft_smoothed_log_probs(model, x, noise)
    assert torch.isfinite(lp).all() and lp[:, 0].min() >= torch.tensor(1e-20).log() - 1e-3
    x_adv = smooth_pgd(model, x, y, eps=0.5, sigma=0.01, m=4, steps=2, noise=noise)
    assert torch.equal(x_adv, x)


class _FakeAutoAttack:
    """Stands in for ``pyautoattack.AutoAttack``: attack ``apgd-ce`` breaks the examples whose
    pixels are 0.1, ``apgd-t`` those at 0.2 (wherever they sit in the call); it records the seed
    it was given and the dtype of the logits it sees."""

    breaks = {"apgd-ce": 0.1, "apgd-t": 0.2}
    seen: list = []

    def __init__(self, model, *, attacks=None, device="cpu", eps=0.3, norm="Linf", seed=None,
                 version="custom"):
        self.model, self.attacks_to_run = model, list(attacks)
        self.seen.append(("seed", seed))

    def run_standard_evaluation(self, x, y, *, batch_size=250):
        self.seen.append(("logits", self.model(x).dtype))
        (name,) = self.attacks_to_run
        hit = (x.flatten(1)[:, 0] - self.breaks[name]).abs() < 1e-6
        return torch.where(hit[:, None, None, None], x + 0.01, x), torch.where(hit, 1 - y, y)


class _Const(nn.Module):
    """Always class 0 of 4 (apgd-t needs 4); float64 parameters (the package must still see
    float32 logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.tensor([1.0, 0.0, -5.0, -5.0], dtype=torch.float64))

    def forward(self, x):
        return self.b.expand(len(x), 4) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_autoattack_adapter_bookkeeping(monkeypatch):
    """``stages[name]`` is the robust flag right after ``name`` (a snapshot, pointwise worst case
    so far), misclassified clean points are never robust, the package sees float32 logits and the
    seed of ``autoattack(..., seed=)``.
    Kills: ``stages[name] = robust`` without ``.clone()``; robust not started from ``clean``;
    ``_Cast`` without ``.float()``; ``autoattack`` not passing ``seed`` on."""
    import pyautoattack

    from robustmaxup.attacks import run_autoattack
    from robustmaxup.attacks.autoattack import autoattack

    monkeypatch.setattr(pyautoattack, "AutoAttack", _FakeAutoAttack)
    monkeypatch.setattr(_FakeAutoAttack, "seen", [])
    x = torch.tensor([0.0, 0.1, 0.2, 0.1, 0.3, 0.4], dtype=torch.float64)
    x = x.view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 0, 0, 0, 0, 1])                     # the last one is wrong to begin with
    res = run_autoattack(_Const(), x, y, eps=0.05, version="custom", attacks=["apgd-ce", "apgd-t"],
                         seed=7)
    assert res.clean.tolist() == [True] * 5 + [False]
    assert res.stages["apgd-ce"].tolist() == [True, False, True, False, True, False]
    assert res.stages["apgd-t"].tolist() == [True, False, False, False, True, False]
    assert torch.equal(res.robust, res.stages["apgd-t"])
    assert torch.equal(res.x_adv[[0, 4, 5]], x[[0, 4, 5]])
    assert torch.allclose(res.x_adv[[1, 2, 3]], x[[1, 2, 3]] + 0.01)
    assert ("seed", 7) in _FakeAutoAttack.seen
    assert {v for k, v in _FakeAutoAttack.seen if k == "logits"} == {torch.float32}
    _FakeAutoAttack.seen.clear()
    autoattack(_Const(), x, y, eps=0.05, version="custom", attacks=["apgd-ce"], seed=11)
    assert _FakeAutoAttack.seen[0] == ("seed", 11)
