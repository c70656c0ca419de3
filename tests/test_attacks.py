"""Correctness tests for robustmaxup.attacks (CPU, tiny models, few steps)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from robustmaxup.attacks import ATTACKS, SoftSmoothed, pgd, smooth_pgd
from robustmaxup.attacks._core import margin_loss, project
from robustmaxup.errors import UserError
from robustmaxup.models import build_model

TOL = 1e-6


def _digits(n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[offset:offset + n] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target[offset:offset + n], dtype=torch.int64)
    return x, y


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, *,
           adv_eps: float = 0.0, seed: int = 0) -> nn.Module:
    """Plain (or PGD-AT when adv_eps > 0) training, full-batch-ish Adam."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 128):
            idx = perm[i:i + 128]
            xb, yb = x[idx], y[idx]
            if adv_eps > 0:
                xb = pgd(model, xb, yb, eps=adv_eps, steps=3, generator=g)
            model.train()
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_model() -> nn.Module:
    torch.manual_seed(0)
    x, y = _digits(1200)
    return _train(build_model("digits_cnn", 10, "digits"), x, y, epochs=4)


@pytest.fixture(scope="module")
def test_batch() -> tuple[torch.Tensor, torch.Tensor]:
    return _digits(64, offset=1400)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.6)])
def test_pgd_stays_in_ball_and_box_and_increases_loss(digits_model, test_batch, norm, eps):
    x, y = test_batch
    x_before = x.clone()
    g = torch.Generator().manual_seed(1)
    x_adv = pgd(digits_model, x, y, eps=eps, norm=norm, steps=10, generator=g)
    assert torch.equal(x, x_before)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "Linf" else d.norm(dim=1)
    assert size.max().item() <= eps + TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    with torch.no_grad():
        clean = nn.functional.cross_entropy(digits_model(x), y, reduction="none")
        adv = nn.functional.cross_entropy(digits_model(x_adv), y, reduction="none")
    assert (adv >= clean - 1e-4).all()
    assert adv.mean() > clean.mean() + 0.5
    clean_acc, adv_acc = _accuracy(digits_model, x, y), _accuracy(digits_model, x_adv, y)
    assert clean_acc > 0.8 and adv_acc < clean_acc - 0.2


def test_pgd_margin_targeted_and_deterministic(digits_model, test_batch):
    x, y = test_batch
    run = lambda **kw: pgd(digits_model, x, y, eps=0.15, steps=8,
                           generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(run(), run())
    x_m = run(loss="margin")
    with torch.no_grad():
        assert (margin_loss(digits_model(x_m), y) >= margin_loss(digits_model(x), y) - 1e-4).all()
    target = (y + 1) % 10
    x_t = pgd(digits_model, x, target, eps=0.3, steps=20, targeted=True,
              generator=torch.Generator().manual_seed(3))
    hit = (digits_model(x_t).argmax(1) == target).float().mean().item()
    assert hit > 0.8


def test_pgd_restores_mode_and_requires_grad_even_on_error(digits_model, test_batch):
    x, y = test_batch

    class Exploding(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, z):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return self.inner(z)

    model = Exploding(copy.deepcopy(digits_model))
    model.zero_grad(set_to_none=True)
    model.train()
    model.inner.net.fc.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x, y, eps=0.1, steps=5)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    model.calls = -100
    pgd(model, x, y, eps=0.1, steps=2)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_pgd_train_mode_leaves_bn_stats(digits_model, test_batch):
    x, y = test_batch
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    pgd(digits_model, x, y, eps=0.1, steps=2, train_mode=True)
    assert not digits_model.training
    for k, v in digits_model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_pgd_callable_loss_and_delta_init(digits_model, test_batch):
    x, y = test_batch
    with torch.no_grad():
        p_clean = digits_model(x).softmax(1)

    def kl(logits, p):
        return nn.functional.kl_div(logits.log_softmax(1), p, reduction="none").sum(1)

    delta0 = 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    x_adv = pgd(digits_model, x, p_clean, eps=0.1, steps=5, loss=kl, delta_init=delta0)
    with torch.no_grad():
        assert kl(digits_model(x_adv), p_clean).mean() > 0.1
    assert (x_adv - x).abs().max() <= 0.1 + TOL


def test_pgd_rejects_bad_budgets(digits_model, test_batch):
    x, y = test_batch
    for kw in ({"eps": 0.0}, {"eps": -1.0}, {"eps": 0.1, "steps": 0}, {"eps": 0.1, "norm": "L3"},
               {"eps": 0.1, "loss": "hinge"}, {"eps": 0.1, "step_size": 0.0}):
        with pytest.raises(UserError):
            pgd(digits_model, x, y, **kw)


def test_project_l2_is_exact_inside_box():
    x = torch.full((3, 1, 4, 4), 0.5)
    delta = torch.randn(3, 1, 4, 4) * 0.05
    delta[0] *= 100
    out = project(delta, x, 0.2, "L2")
    norms = out.flatten(1).norm(dim=1)
    assert math.isclose(norms[0].item(), 0.2, rel_tol=1e-5)
    assert torch.allclose(out[1:], delta[1:])


def test_smooth_pgd_increases_smoothed_loss_and_reuses_noise(digits_model, test_batch):
    x, y = test_batch[0][:16], test_batch[1][:16]
    m, sigma, eps = 8, 0.25, 0.5
    noise = torch.randn((m, *x.shape), generator=torch.Generator().manual_seed(0)) * sigma
    x_adv = smooth_pgd(digits_model, x, y, eps=eps, sigma=sigma, m=m, steps=5, noise=noise)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= eps + TOL).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1

    def soft_ce(z):
        from robustmaxup.attacks import soft_smoothed_log_probs
        with torch.no_grad():
            return nn.functional.nll_loss(soft_smoothed_log_probs(digits_model, z, noise), y,
                                          reduction="none")

    assert (soft_ce(x_adv) >= soft_ce(x) - 1e-4).all()
    assert soft_ce(x_adv).mean() > soft_ce(x).mean() + 0.2
    g = lambda: torch.Generator().manual_seed(5)
    a = smooth_pgd(digits_model, x, y, eps=eps, sigma=sigma, m=m, steps=2, generator=g())
    b = smooth_pgd(digits_model, x, y, eps=eps, sigma=sigma, m=m, steps=2, generator=g())
    assert torch.equal(a, b)
    with pytest.raises(UserError):
        smooth_pgd(digits_model, x, y, eps=eps, sigma=sigma, m=m + 1, steps=2, noise=noise)


def test_soft_smoothed_is_randomized_and_normalized(digits_model, test_batch):
    x = test_batch[0][:8]
    sm = SoftSmoothed(digits_model, sigma=0.25, m=16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = sm(x), sm(x)
    assert a.shape == (8, 10)
    assert torch.allclose(a.exp().sum(1), torch.ones(8), atol=1e-5)
    assert not torch.equal(a, b)


def test_registry_lists_attacks():
    assert ATTACKS.get("pgd") is pgd and ATTACKS.get("smooth_pgd") is smooth_pgd
    with pytest.raises(UserError, match="known"):
        ATTACKS.get("fgsm2")
