"""Correctness tests for robustmaxup.attacks (CPU, tiny models, few steps)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from robustmaxup.attacks import ATTACKS, EVALUATORS, AttackConfig, SoftSmoothed, pgd, smooth_pgd
from robustmaxup.attacks._core import margin_loss, project, random_init
from robustmaxup.attacks.result import AttackResult, rescore
from robustmaxup.checkpoints import build_model_for
from robustmaxup.errors import UserError
from robustmaxup.methods.families import reference_start

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
    return _train(build_model_for("digits_cnn", "digits"), x, y, epochs=4)


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
    delta = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.02
    delta[0] *= 250
    out = project(x + delta, x, 0.2, "L2") - x
    norms = out.flatten(1).norm(dim=1)
    assert math.isclose(norms[0].item(), 0.2, rel_tol=1e-5)
    assert torch.allclose(out[1:], delta[1:], atol=1e-7)


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


def test_soft_smoothed_per_example_noise_ignores_the_batch(digits_model, test_batch):
    x = test_batch[0][:5]
    sm = SoftSmoothed(digits_model, sigma=0.25, m=3)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(5)]  # noqa: E731
    with sm.per_example(gens()):
        whole = sm.noise(x)
    g = gens()
    with sm.per_example(g[:2]):
        first = sm.noise(x[:2])
    with sm.per_example(g[2:]):
        rest = sm.noise(x[2:])
    assert whole.shape == (3, 5, 1, 8, 8)
    assert torch.equal(whole, torch.cat([first, rest], 1))
    assert sm._rows is None  # the context is left
    with sm.per_example(gens()), pytest.raises(ValueError, match="rows"):
        sm(x[:4])


def test_evaluate_draws_every_random_number_per_example(digits_model, test_batch):
    from robustmaxup.attacks import AttackConfig, evaluate

    x, y = test_batch[0][:12], test_batch[1][:12]
    idx = list(range(100, 112))
    for cfg in ({"eps": 0.1}, {"eps": 0.5, "norm": "L2", "sigma": 0.25, "copies": 4}):
        whole = evaluate(digits_model, x, y, AttackConfig(attack="pgd", steps=3, batch_size=12, **cfg),
                         seed=3, indices=idx)
        small = AttackConfig(attack="pgd", steps=3, batch_size=4, **cfg)
        parts = [evaluate(digits_model, x[s], y[s], small, seed=3, indices=idx[s])
                 for s in (slice(0, 5), slice(5, 12))]
        assert torch.equal(whole.x_adv, torch.cat([p.x_adv for p in parts]))
        assert torch.equal(whole.rescored, torch.cat([p.rescored for p in parts], 1))
        assert torch.equal(whole.robust, torch.cat([p.robust for p in parts]))
        other = evaluate(digits_model, x, y, AttackConfig(attack="pgd", steps=3, batch_size=12, **cfg),
                         seed=3, indices=[i + 1 for i in idx])
        assert not torch.equal(other.x_adv, whole.x_adv)  # the index, not the position, seeds


def test_registry_lists_attacks():
    assert ATTACKS.get("pgd") is pgd and ATTACKS.get("smooth_pgd") is smooth_pgd
    with pytest.raises(UserError, match="known"):
        ATTACKS.get("fgsm2")


# --------------------------------------------------------------------------- known answers


class _Linear(nn.Module):
    """Two logits ``(-z/2, z/2)`` with ``z = w·x + b``: class 1 iff ``z > 0``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z / 2, z / 2], 1)


@pytest.fixture(scope="module")
def linear_problem():
    """Points near 0.5 at known L2 distances |w·x+b|/||w|| (in [0.01, 0.61]) from the boundary;
    the straight path to the boundary stays inside the [0,1] box."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, generator=g)
    w = w / w.norm()
    n = 120
    x = 0.5 + 0.05 * (2 * torch.rand(n, 1, 8, 8, generator=g) - 1)
    signed = (torch.rand(n, generator=g) * 0.6 + 0.01) * torch.where(
        torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = x + ((signed - x.flatten(1) @ w)[:, None] * w[None]).view(n, 1, 8, 8)
    assert 0.05 < x.min() and x.max() < 0.95
    model = _Linear(w).eval()
    z = x.flatten(1) @ w
    return model, x, (z > 0).long(), z.abs()


@pytest.mark.parametrize("random_start,band", [(False, 1e-3), (True, 0.03)])
def test_pgd_l2_flips_exactly_points_closer_than_eps(linear_problem, random_start, band):
    model, x, y, dist = linear_problem
    eps = 0.3
    x_adv = pgd(model, x, y, eps=eps, norm="L2", steps=20, random_start=random_start,
                generator=torch.Generator().manual_seed(1))
    flipped = model(x_adv).argmax(1) != y
    clear = (dist - eps).abs() > band * eps
    assert clear.sum() > 100
    assert torch.equal(flipped[clear], (dist < eps)[clear])


def test_autoattack_l2_flips_exactly_points_closer_than_eps(linear_problem, tmp_path):
    from robustmaxup.attacks import run_autoattack

    model, x, y, dist = linear_problem
    eps = 0.3
    log_file = tmp_path / "aa.log"
    res = run_autoattack(model, x, y, eps=eps, norm="L2", version="custom", attacks=["apgd-ce"],
                         seed=0, log_file=log_file, batch_size=64)
    clear = (dist - eps).abs() > 0.01 * eps
    assert torch.equal((~res.robust)[clear], (dist < eps)[clear])
    d = (res.x_adv - x).flatten(1).norm(dim=1)
    assert d.max() <= eps + 1e-5
    assert "apgd-ce" in log_file.read_text()
    assert list(res.stages) == ["apgd-ce"] and res.clean.all()


# --------------------------------------------------------------------------- AutoAttack adapter


def _shorten(adversary) -> None:
    adversary.apgd.n_iter = 8
    adversary.apgd_targeted.n_iter = 8
    adversary.apgd_targeted.n_target_classes = 3
    adversary.fab.n_iter = 8
    adversary.fab.n_target_classes = 3
    adversary.square.n_queries = 40


def test_autoattack_adapter_equals_direct_call(digits_model, test_batch):
    from pyautoattack import AutoAttack

    from robustmaxup.attacks import rescore, run_autoattack

    x, y = test_batch[0][:24], test_batch[1][:24]
    attacks = ["apgd-ce", "apgd-t", "fab-t", "square"]
    eps = 0.06
    model = copy.deepcopy(digits_model)
    rng_before = torch.random.get_rng_state()
    res = run_autoattack(model, x, y, eps=eps, norm="Linf", version="custom", attacks=attacks,
                         seed=3, batch_size=16, configure=_shorten)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters()) and not model.training

    direct = AutoAttack(copy.deepcopy(digits_model).eval(), attacks=attacks, device="cpu",
                        eps=eps, norm="Linf", seed=3, version="custom")
    _shorten(direct)
    x_d, y_d = direct.run_standard_evaluation(x, y, batch_size=16)
    assert torch.equal(res.robust, y_d == y)
    assert torch.equal(res.x_adv, x_d)
    clean_acc, robust_acc = res.clean.float().mean(), res.robust.float().mean()
    assert 0 < robust_acc < clean_acc
    # stages are cumulative (pointwise worst case) and non-increasing
    prev = res.clean
    for flags in res.stages.values():
        assert not (flags & ~prev).any()
        prev = flags
    # re-scoring the returned x_adv reproduces the reported robust accuracy exactly
    assert torch.equal(rescore(digits_model, res.x_adv, y)[0], res.robust)
    assert ((res.x_adv - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all()


def test_autoattack_checks_inputs_and_options(digits_model, test_batch):
    from robustmaxup.attacks import run_autoattack

    x, y = test_batch[0][:4], test_batch[1][:4]
    bad = [({"x": x * 2 - 0.5}, "[0, 1]"), ({"norm": "L3"}, "norm"), ({"version": "fast"}, "version"),
           ({"version": "custom"}, "attacks"), ({"attacks": ["apgd-ce"]}, "custom"),
           ({"version": "custom", "attacks": ["pgd"]}, "pgd"), ({"eps": 0.0}, "eps")]
    for kw, word in bad:
        kw = {"x": x, "eps": 0.1, **kw}
        with pytest.raises(UserError, match=word.replace("[", r"\[")):
            run_autoattack(digits_model, kw.pop("x"), y, **kw)


def test_autoattack_restores_train_mode(digits_model, test_batch):
    from robustmaxup.attacks import run_autoattack

    model = copy.deepcopy(digits_model).train()
    seen = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(mod.training))
    x, y = test_batch[0][:8], test_batch[1][:8]
    run_autoattack(model, x, y, eps=0.05, version="custom", attacks=["apgd-ce"],
                   configure=_shorten)
    assert seen and not any(seen)
    assert all(m.training for m in model.modules())


@pytest.mark.slow
def test_autoattack_standard_version_equals_direct_call(digits_model, test_batch):
    from pyautoattack import AutoAttack

    from robustmaxup.attacks import rescore, run_autoattack

    x, y = test_batch[0][:10], test_batch[1][:10]  # ~15 s per run; 2 of 10 survive all 4 attacks
    res = run_autoattack(digits_model, x, y, eps=0.1, version="standard", seed=0)
    direct = AutoAttack(copy.deepcopy(digits_model), device="cpu", eps=0.1, seed=0)
    x_d, y_d = direct.run_standard_evaluation(x, y)
    assert list(res.stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert torch.equal(res.robust, y_d == y) and torch.equal(res.x_adv, x_d)
    assert torch.equal(rescore(digits_model, res.x_adv, y)[0], res.robust)
    assert res.robust.any() and (~res.robust & res.clean).any()


# --------------------------------------------------------------------------- evaluation


def test_pgd_at_model_is_more_robust_than_standard_one():
    x, y = _digits(1000)
    xt, yt = _digits(300, offset=1400)
    accs = {}
    for name, adv_eps in (("standard", 0.0), ("pgd_at", 0.15)):
        torch.manual_seed(0)
        model = _train(build_model_for("digits_cnn", "digits"), x, y, epochs=3, adv_eps=adv_eps)
        x_adv = pgd(model, xt, yt, eps=0.15, steps=10, generator=torch.Generator().manual_seed(0))
        accs[name] = (_accuracy(model, xt, yt), _accuracy(model, x_adv, yt))
    assert accs["standard"][0] > 0.8 and accs["pgd_at"][0] > 0.7
    assert accs["standard"][1] < 0.2
    assert accs["pgd_at"][1] > accs["standard"][1] + 0.2


def test_evaluate_pgd_and_smoothed(digits_model, test_batch):
    from robustmaxup.attacks import AttackConfig, evaluate

    x, y = test_batch[0][:32], test_batch[1][:32]
    cfg = AttackConfig(eps=0.1, attack="pgd", steps=5, batch_size=16)
    a = evaluate(digits_model, x, y, cfg, seed=7)
    b = evaluate(digits_model, x, y, cfg, seed=7)
    assert torch.equal(a.robust, b.robust) and torch.equal(a.x_adv, b.x_adv)
    assert a.rescored.shape == (1, 32)
    assert a.robust.float().mean() <= a.clean.float().mean()
    assert torch.equal(a.robust, a.stages["pgd"])

    sm = AttackConfig(eps=0.5, attack="autoattack", norm="L2", version="rand", sigma=0.25, copies=4,
                      batch_size=32)
    from robustmaxup.attacks import run_autoattack

    orig = run_autoattack

    def short(*args, **kw):
        return orig(*args, **kw, configure=lambda adv: setattr(adv.apgd, "n_iter", 3)
                    or setattr(adv.apgd, "eot_iter", 2))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("robustmaxup.attacks.evaluation.run_autoattack", short)
        r = evaluate(digits_model, x, y, sm, seed=1)
    assert r.rescored.shape == (5, 32)
    assert list(r.stages) == ["apgd-ce", "apgd-dlr"]
    assert not (r.robust & ~r.attack_robust).any()
    assert ((r.x_adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    for kw in ({"eps": 1.5}, {"eps": 0.1, "norm": "L1", "attack": "pgd"},
               {"eps": 9.0, "norm": "L2"}, {"eps": 0.1, "attack": "cw"}):
        with pytest.raises(UserError):
            evaluate(digits_model, x, y, AttackConfig(**kw), seed=0)


def test_pgd_linf_matches_a_plain_reference_loop_bitwise(digits_model, test_batch):
    """Same start, same fp32 steps: our PGD equals the textbook loop exactly."""
    x, y = test_batch
    eps, alpha, steps = 0.1, 0.02, 7
    delta0 = (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) - 1) * eps
    adv = (x + delta0).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(digits_model(adv), y, reduction="sum")
        grad = torch.autograd.grad(loss, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    ours = pgd(digits_model, x, y, eps=eps, steps=steps, step_size=alpha, delta_init=delta0)
    assert torch.equal(ours, adv)
    assert not torch.equal(ours, pgd(digits_model, x, y, eps=eps, steps=steps, step_size=alpha,
                                     delta_init=delta0, targeted=True))


def test_pgd_follows_input_dtype(linear_problem):
    model, x, y, _ = linear_problem
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    out = pgd(model64, x64, y, eps=0.1, norm="L2", steps=3, random_start=False)
    assert out.dtype == torch.float64 and out.device == x.device
    out32 = pgd(model, x, y, eps=0.1, norm="L2", steps=3, random_start=False)
    assert torch.allclose(out.float(), out32, atol=1e-5)


# --- found missing by a mutation audit (2026-11-24) ----------------------------------------
@pytest.mark.parametrize("start", [random_init, reference_start])
def test_linf_random_starts_fill_the_box(start):
    x = torch.full((500, 1, 8, 8), 0.5)
    d = start(x, 0.1, "Linf", torch.Generator().manual_seed(0))
    assert d.abs().max() <= 0.1 and d.abs().max() > 0.099
    assert d.std().item() == pytest.approx(0.1 / 3 ** 0.5, rel=0.02)


def test_l2_random_init_is_uniform_in_the_ball_volume():
    x = torch.full((4000, 1, 4, 4), 0.5)                 # d = 16
    r = random_init(x, 0.5, "L2", torch.Generator().manual_seed(0)).flatten(1).norm(dim=1) / 0.5
    assert r.max() <= 1 + 1e-6
    assert (r ** 16).mean().item() == pytest.approx(0.5, abs=0.02)   # P(r <= t) = t^d


@pytest.mark.parametrize("per_example", [False, True])
def test_soft_smoothed_noise_has_scale_sigma(per_example):
    sm = SoftSmoothed(nn.Flatten(), sigma=0.3, m=4, generator=torch.Generator().manual_seed(0))
    x = torch.rand(32, 1, 8, 8)
    gens = [torch.Generator().manual_seed(i) for i in range(32)] if per_example else None
    with sm.per_example(gens):
        noise = sm.noise(x)
    assert noise.shape == (4, 32, 1, 8, 8)
    assert noise.std().item() == pytest.approx(0.3, rel=0.05) and noise.mean().abs() < 0.01


def test_robust_requires_every_rescore_to_be_correct():
    res = AttackResult(x_adv=torch.zeros(3, 1), clean=torch.tensor([True, True, False]),
                       stages={"a": torch.tensor([True, True, False])},
                       rescored=torch.tensor([[True, True, True], [True, False, True], [True, True, True]]))
    assert res.robust.tolist() == [True, False, False]


class CoinFlip(nn.Module):
    """Random logits: every call a new coin."""

    def forward(self, x):
        return torch.randn(x.shape[0], 2)


def test_rescore_draws_fresh_randomness_per_repeat():
    torch.manual_seed(0)
    flags = rescore(CoinFlip(), torch.zeros(50, 1), torch.zeros(50, dtype=torch.long), repeats=4)
    assert flags.shape == (4, 50)
    assert not all(torch.equal(flags[0], f) for f in flags[1:])


@pytest.mark.parametrize("name", ["pgd", "smooth_pgd"])
def test_attacks_run_with_parameters_frozen(name):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).train()
    seen = []
    model.register_forward_pre_hook(lambda mod, inp: seen.append(
        (mod.training, any(p.requires_grad for p in mod.parameters()))))
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    kw = dict(eps=0.1, steps=2) if name == "pgd" else dict(eps=0.5, sigma=0.25, m=2, steps=2)
    ATTACKS.get(name)(model, x, y, **kw)
    assert seen and all(s == (False, False) for s in seen)
    assert model.training and all(p.requires_grad for p in model.parameters())


class Cheat(nn.Module):
    """Wrong on the exact clean points, right (class 1) anywhere else; BatchNorm inside."""

    def __init__(self, x0):
        super().__init__()
        self.x0, self.bn = x0, nn.BatchNorm1d(64)

    def forward(self, x):
        moved = (x.flatten(1) != self.x0.flatten(1)).any(1).float() + 0 * self.bn(x.flatten(1)).sum(1)
        return torch.stack([1 - moved, moved], 1)


def test_pgd_evaluator_never_calls_a_misclassified_point_robust():
    x = torch.full((6, 1, 8, 8), 0.5)
    y = torch.ones(6, dtype=torch.long)
    model = Cheat(x).train()
    res = EVALUATORS.get("pgd")(model, x, y, AttackConfig(eps=0.1, attack="pgd", steps=2), seed=0,
                                indices=list(range(6)))
    assert not res.clean.any() and not res.attack_robust.any()


def test_pgd_evaluator_predicts_in_eval_mode_and_leaves_bn_stats():
    x = torch.rand(6, 1, 8, 8)
    model = Cheat(x).train()
    before = {k: v.clone() for k, v in model.bn.state_dict().items()}
    EVALUATORS.get("pgd")(model, x, torch.ones(6, dtype=torch.long), AttackConfig(eps=0.1, attack="pgd", steps=2),
                          seed=0, indices=list(range(6)))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.bn.state_dict().items())


@pytest.mark.parametrize("bad", [1.01, -0.01])
def test_pgd_evaluator_rejects_pixels_outside_unit_range(bad):
    x = torch.full((2, 1, 8, 8), 0.5)
    x[1, 0, 0, 0] = bad
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        EVALUATORS.get("pgd")(Cheat(x).eval(), x, torch.ones(2, dtype=torch.long),
                              AttackConfig(eps=0.1, attack="pgd", steps=1), seed=0, indices=[0, 1])


def test_autoattack_package_warnings_reach_the_log_once_each(tmp_path, caplog):
    """pyautoattack warns "randomized defense" again for every attack run; the user sees it once,
    and its file log keeps everything."""
    import logging

    from robustmaxup.attacks.autoattack import capture_log

    package = logging.getLogger("auto-attack")
    with caplog.at_level(logging.INFO, logger="robustmaxup"):
        for chunk in range(2):                       # one capture per chunk, as evaluate_dataset does
            with capture_log(tmp_path / "aa.log"):
                for _ in range(3):
                    package.warning("it seems to be a randomized defense! (test %s)", tmp_path.name)
                package.warning("another (test %s)", tmp_path.name)
                package.debug("chatter")
    seen = [r.getMessage() for r in caplog.records if "AutoAttack" in r.getMessage()]
    assert seen == [f"warning from AutoAttack: it seems to be a randomized defense! (test {tmp_path.name})",
                    f"warning from AutoAttack: another (test {tmp_path.name})"]
    text = (tmp_path / "aa.log").read_text()
    assert text.count("randomized defense") == 6 and "chatter" in text
