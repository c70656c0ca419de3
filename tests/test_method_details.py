"""Exact values of the training methods' losses, targets and perturbations on tiny linear models,
against independent few-line restatements of each paper's formula (found missing by a mutation
audit of robustmaxup/methods/, 2026-11-24): reductions, which copy is the worst, what is
detached, which coefficient multiplies what, which partner's label is mixed in, and the exact
weight-space perturbation of AWP/AMP."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustmaxup.errors import UserError
from robustmaxup.methods import build_method
from robustmaxup.methods import kmixup as kmixup_module
from robustmaxup.methods.amp import AMP
from robustmaxup.methods.augment import draw_noise, mix_targets
from robustmaxup.methods.awp import AWP
from robustmaxup.methods.base import per_example_loss, soft_cross_entropy
from robustmaxup.methods.cutmix import cut_box, cutmix_batch
from robustmaxup.methods.kmixup import kmixup_partner
from robustmaxup.methods.macer import radius_hinge
from robustmaxup.methods.smoothmix import clip_l2
from robustmaxup.methods.weight_perturbation import global_norm


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _method(name: str, num_classes: int = 3, **kw):
    method = build_method(name, **kw)
    method.setup(num_classes=num_classes)
    return method


class Linear(nn.Module):
    """A float64 linear classifier ``z = W x.flatten() + b`` with fixed weights."""

    def __init__(self, d: int, k: int, seed: int = 0) -> None:
        super().__init__()
        g = _gen(seed)
        self.weight = nn.Parameter(torch.randn(k, d, generator=g, dtype=torch.float64))
        self.bias = nn.Parameter(0.3 * torch.randn(k, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    """Row-wise log-softmax written out (no F.log_softmax)."""
    return z - z.exp().sum(-1, keepdim=True).log()


def _grads(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))


def _assert_same_grads(ours, reference, rtol=1e-9):
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=rtol, atol=1e-12)


# --- the shared loss helpers ---------------------------------------------------------------------

def test_soft_cross_entropy_by_hand():
    """Row 0: logits (0, ln 3) -> p = (1/4, 3/4), target (1/2, 1/2); row 1: p = (1/2, 1/2),
    target class 0. The batch loss is the MEAN of the two rows."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    row0 = -0.5 * math.log(0.25) - 0.5 * math.log(0.75)
    row1 = math.log(2.0)
    assert per_example_loss(logits, target).tolist() == pytest.approx([row0, row1], rel=1e-12)
    assert soft_cross_entropy(logits, target).item() == pytest.approx((row0 + row1) / 2, rel=1e-12)
    assert soft_cross_entropy(logits, torch.tensor([1, 0])).item() == pytest.approx(
        (math.log(4 / 3) + math.log(2.0)) / 2, rel=1e-12)


# --- MaxUp -----------------------------------------------------------------------------------------

def test_maxup_keeps_each_examples_worst_copy_copy_major():
    """3 copies of 2 examples (copies != batch, so a transposed index shows). The model's
    logits are (0, x): the loss of copy r is computed here in plain Python and each example's
    worst copy picked by hand; its target must come with it."""
    model = Linear(1, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0]], dtype=torch.float64))
        model.bias.zero_()
    method = _method("maxup", sigma=0.5, copies=3)
    xs = torch.tensor([0.1, 2.0, 1.5, -1.0, 0.3, 0.5], dtype=torch.float64).view(6, 1)   # [copy0 | copy1 | copy2]
    ts = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.1, 0.9], [0.7, 0.3], [0.5, 0.5]],
                      dtype=torch.float64)

    def loss(r):   # -(t0 log p0 + t1 log p1), p = softmax(0, x)
        x = xs[r, 0].item()
        lse = math.log(1 + math.exp(x))
        return -(ts[r, 0].item() * (0 - lse) + ts[r, 1].item() * (x - lse))

    worst = [max(range(3), key=lambda c: loss(c * 2 + b)) for b in range(2)]
    assert worst == [1, 0]                                  # example 0: copy 1, example 1: copy 0
    rows = [c * 2 + b for b, c in enumerate(worst)]
    xw, tw = method.select_worst(model, xs, ts, 2)
    assert torch.equal(xw, xs[rows]) and torch.equal(tw, ts[rows])
    out = method.loss(model, (xw, tw))
    assert out.loss.item() == pytest.approx(sum(loss(r) for r in rows) / 2, rel=1e-12)
    assert out.targets.tolist() == [0, 0]                  # each soft row's dominant label


# --- SmoothMix -------------------------------------------------------------------------------------

def _smoothmix_reference(model, noise, x_s, x_mix, lam, y, eta, warm):
    """jh-jeong/smoothmix code/train.py:171-190 written out: CE at x_s + δ_i, the target
    (1-λ) p̄(x_s) + λ/K (not detached), KL(target || softmax(f(x_mix + δ_i))) on the examples
    p̄ gets right, averaged over copies and batch, weighted by eta * warm."""
    m, b = noise.shape[:2]
    log_p = torch.stack([_log_softmax(model(x_s + noise[i])) for i in range(m)])       # [m, B, K]
    ce = -log_p.gather(2, y.view(1, b, 1).expand(m, b, 1)).mean()
    p_bar = log_p.exp().mean(0)
    k = p_bar.shape[1]
    target = (1 - lam[:, None]) * p_bar + lam[:, None] / k
    correct = (p_bar.argmax(1) == y).double()
    total = 0.0
    for i in range(m):
        log_q = _log_softmax(model(x_mix + noise[i]))
        kl = (target * (target.log() - log_q)).sum(1)
        total = total + (correct * kl).sum()
    return ce + eta * warm * total / (m * b)


def test_smoothmix_loss_value_and_gradient_match_the_reference():
    model = Linear(4, 3, seed=1)
    g = _gen(2)
    x = torch.rand(6, 1, 2, 2, generator=g, dtype=torch.float64)
    x_mix = (x + 0.4 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    noise = draw_noise(x, 3, 0.5, g)
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    with torch.no_grad():
        top = torch.stack([F.softmax(model(x + noise[i]), 1) for i in range(3)]).mean(0).argmax(1)
    y = torch.where(torch.arange(6) % 2 == 0, top, (top + 1) % 3)      # half right, half wrong
    method = _method("smoothmix", copies=3, smoothmix_eta=1.7, warmup=4)
    method.on_epoch_start(1, 10)                                          # warm = 2/4
    out = method.loss(model, (noise, x, x_mix, lam, y))
    reference = _smoothmix_reference(model, noise, x, x_mix, lam, y, 1.7, 0.5)
    ce_only = _smoothmix_reference(model, noise, x, x_mix, lam, y, 0.0, 0.5)
    assert reference.item() - ce_only.item() > 1e-3                       # the mixup term counts
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-12)
    _assert_same_grads(_grads(out.loss, model), _grads(reference, model))


def test_clip_l2_moves_only_points_outside_the_ball():
    x = torch.zeros(2, 2, dtype=torch.float64)
    x_new = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)      # norms 5 and 0.5
    assert torch.allclose(clip_l2(x_new, x, 2.5), torch.tensor([[1.5, 2.0], [0.3, 0.4]], dtype=torch.float64))
    assert torch.equal(clip_l2(x_new, x, 10.0), x_new)
    assert torch.equal(clip_l2(x_new, x, 0.0), x)


def test_smoothmix_max_norm_bounds_the_mixed_point_around_x():
    """With a norm bound and a mix step the final adversary is projected around x (not around
    the one-step point x_s), so x_mix = (1-λ) x_s + λ x_T stays within the bound of x."""
    torch.manual_seed(0)
    model = Linear(4, 3, seed=3)
    x = torch.rand(64, 1, 2, 2, generator=_gen(4), dtype=torch.float64) * 0.2 + 0.4
    y = torch.randint(0, 3, (64,), generator=_gen(5))
    method = _method("smoothmix", copies=2, attack_steps=4, attack_step_size=0.3, mix_step=1,
                     smoothmix_max_norm=0.25)
    _, x_s, x_mix, lam, _ = method.prepare(model, x, y, generator=_gen(6))
    assert ((x_s - x).flatten(1).norm(dim=1) <= 0.25 + 1e-9).all()
    assert ((x_mix - x).flatten(1).norm(dim=1) <= 0.25 + 1e-9).all()


# --- SmoothAdv ----------------------------------------------------------------------------------

def test_smoothadv_single_noise_trains_on_the_first_copy_in_one_step():
    """multi_noise=False: the attack is the same as with multi-noise (same draws), the training
    input is x_adv + δ_1 (the first copy), and the reference takes one step per loader batch."""
    model = Linear(4, 3, seed=1)
    x = torch.rand(5, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    multi = _method("smoothadv", copies=3, attack_steps=2, smoothadv_eps=0.5)
    single = _method("smoothadv", copies=3, attack_steps=2, smoothadv_eps=0.5, multi_noise=False)
    xs, _ = multi.prepare(model, x, y, generator=_gen(7))
    x1, y1 = single.prepare(model, x, y, generator=_gen(7))
    assert torch.allclose(x1, xs.view(3, 5, 1, 2, 2)[0], rtol=0, atol=1e-12) and torch.equal(y1, y)
    assert not torch.allclose(x1, xs.view(3, 5, 1, 2, 2)[2])
    assert single.reference_chunks() == 1 and multi.reference_chunks() == 3
    assert single.loss_cost() == 3.0 and multi.loss_cost() == 9.0


# --- consistency and MACER -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["consistency", "macer"])
def test_noisy_copies_are_copy_major(name):
    """Row r of the prepared batch is copy r // B of example r % B: the loss views it as
    [m, B, ...] and pairs it with y.repeat(m)."""
    x = torch.rand(4, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    method = _method(name, copies=3, sigma=0.5)
    xs, _ = method.prepare(Linear(4, 3), x, torch.zeros(4, dtype=torch.long), generator=_gen(1))
    noise = 0.5 * torch.randn((3, *x.shape), generator=_gen(1), dtype=x.dtype)     # δ ~ N(0, σ² I)
    assert torch.allclose(xs, (x.unsqueeze(0) + noise).flatten(0, 1), rtol=0, atol=1e-12)


def test_draw_noise_has_standard_deviation_sigma():
    x = torch.zeros(500, 1, 4, 4)
    noise = draw_noise(x, 2, 0.3, _gen(0))
    assert noise.shape == (2, *x.shape)
    assert noise.std().item() == pytest.approx(0.3, rel=0.02) and abs(noise.mean().item()) < 0.01


def test_macer_hinge_by_hand_gap_above_gamma_contributes_nothing():
    """Two classes, identical copies with logits (a, 0), beta = 3: p̂_y = sigmoid(3a) and the
    gap Φ⁻¹(p̂_y) - Φ⁻¹(1 - p̂_y) = 2 Φ⁻¹(p̂_y). With gamma = 0.5: a = 2 (gap 2.4 > gamma) gives 0,
    a = 0.05 gives gamma - gap, a = -0.1 (wrong class on top) gives 0."""
    a = torch.tensor([2.0, 0.05, -0.1], dtype=torch.float64)
    logits = torch.stack([a, torch.zeros(3, dtype=torch.float64)], 1).expand(2, 3, 2)
    hinge = radius_hinge(logits, torch.zeros(3, dtype=torch.long), beta=3.0, gamma=0.5)
    p = 1 / (1 + math.exp(-3 * 0.05))
    gap = 2 * NormalDist().inv_cdf(p)
    assert 2 * NormalDist().inv_cdf(1 / (1 + math.exp(-6.0))) > 0.5
    assert hinge.tolist() == pytest.approx([0.0, 0.5 - gap, 0.0], abs=1e-12)


# --- PGD-AT and TRADES ----------------------------------------------------------------------------

def test_pgd_at_loss_is_plain_cross_entropy_at_the_adversary():
    model = Linear(4, 3)
    x_adv = torch.rand(5, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1])
    z = model(x_adv)
    expected = (z.exp().sum(1).log() - z.gather(1, y[:, None]).squeeze(1)).mean()
    out = _method("pgd_at").loss(model, (x_adv, y))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert torch.equal(out.targets, y)


def test_trades_loss_and_gradient_flow_through_the_clean_prediction():
    """Zhang et al.'s loss CE(f(x), y) + beta KL(p(x) || p(x_adv)) with p(x) NOT detached
    (yaodongyu/TRADES trades.py:73-76): the clean logits get gradient from both terms."""
    model = Linear(4, 3, seed=2)
    g = _gen(1)
    x = torch.rand(5, 1, 2, 2, generator=g, dtype=torch.float64)
    x_adv = (x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 2, 1])
    log_p, log_q = _log_softmax(model(x)), _log_softmax(model(x_adv))
    ce = -log_p.gather(1, y[:, None]).mean()
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    reference = ce + 2.5 * kl
    out = _method("trades", trades_beta=2.5).loss(model, (x, x_adv, y))
    assert kl.item() > 1e-3
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-12)
    _assert_same_grads(_grads(out.loss, model), _grads(reference, model))


class Flat(nn.Module):
    """Logits that do not depend on the input (zero input gradient): PGD cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.2, -0.1, 0.4]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_trades_attack_starts_from_a_small_gaussian_step():
    """yaodongyu/TRADES trades.py:31: x_adv starts at x + 0.001 N(0, I). With a zero input
    gradient no step moves it, so x_adv - x is exactly that start."""
    x = torch.full((200, 1, 4, 4), 0.5)
    x_clean, x_adv, _ = _method("trades", attack_steps=2).prepare(Flat(), x, torch.zeros(200, dtype=torch.long),
                                                                 generator=_gen(0))
    assert torch.equal(x_clean, x)
    assert (x_adv - x).std().item() == pytest.approx(0.001, rel=0.05)


# --- the adversarial family -----------------------------------------------------------------------

def test_linf_default_budget_is_8_and_2_over_255():
    method = _method("pgd_at")
    assert (method.attack_eps, method.attack_step_size) == (8 / 255, 2 / 255)


def test_adversarial_validation_runs_eval_steps_attack_steps():
    """evaluate() attacks with eval_steps steps (one gradient forward each), then one forward."""
    model = Linear(4, 3)
    grad_forwards: list[bool] = []
    model.register_forward_hook(lambda mod, inp, out: grad_forwards.append(torch.is_grad_enabled()))
    method = _method("pgd_at", attack_steps=2, eval_steps=5)
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        method.evaluate(model, x, torch.tensor([0, 1, 2]), generator=_gen(0))
    assert grad_forwards == [True] * 5 + [False]


# --- AWP / AMP ------------------------------------------------------------------------------------

class Quadratic(nn.Module):
    """Two parameter tensors ``a`` [2] and ``b`` [1]; the loss is 0.5 (a·diag(1, 3)·a) + 0.5 b²,
    so the gradient is (a0, 3 a1) and b: the ascent path is computable by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([2.0], dtype=torch.float64))

    def loss(self):
        return 0.5 * (self.a[0] ** 2 + 3 * self.a[1] ** 2) + 0.5 * self.b[0] ** 2


def _grad(a, b):
    return [a[0], 3 * a[1]], [b[0]]


def _scale(vs, eps):
    n = math.sqrt(sum(v * v for v in vs))
    return [v * min(1.0, eps / n) for v in vs]


def _amp_by_hand(steps, step_size, eps, per_tensor):
    """v <- project(v + step_size * ∇L(w + v)), from v = 0 (hiyouga/AMP-Regularizer amp.py:49-58)."""
    w_a, w_b = [1.0, 1.0], [2.0]
    v_a, v_b = [0.0, 0.0], [0.0]
    for _ in range(steps):
        g_a, g_b = _grad([w + v for w, v in zip(w_a, v_a)], [w + v for w, v in zip(w_b, v_b)])
        v_a = [v + step_size * g for v, g in zip(v_a, g_a)]
        v_b = [v + step_size * g for v, g in zip(v_b, g_b)]
        if per_tensor:
            v_a, v_b = _scale(v_a, eps), _scale(v_b, eps)
        else:
            joint = _scale(v_a + v_b, eps)
            v_a, v_b = joint[:2], joint[2:]
    return v_a, v_b


@pytest.mark.parametrize("steps, step_size, eps, per_tensor", [
    (2, 1.0, 1.0, True), (2, 1.0, 1.0, False), (3, 0.5, 100.0, False), (2, 0.5, 100.0, True),
    (1, 0.3, 100.0, False)])
def test_amp_ascent_path_by_hand(steps, step_size, eps, per_tensor):
    """Each inner step takes the gradient at the current w + v and projects after every step."""
    model = Quadratic()
    amp = AMP(eps=eps, steps=steps, step_size=step_size, per_tensor=per_tensor)
    v_a, v_b = _amp_by_hand(steps, step_size, eps, per_tensor)
    with amp.perturbed(model, model.loss) as deltas:
        assert deltas[0].tolist() == pytest.approx(v_a, rel=1e-12)   # float64 weights keep float64 norms
        assert deltas[1].tolist() == pytest.approx(v_b, rel=1e-12)
        assert model.a.tolist() == pytest.approx([1 + v_a[0], 1 + v_a[1]], rel=1e-12)
        assert model.b.tolist() == pytest.approx([2 + v_b[0]], rel=1e-12)
    assert model.a.tolist() == [1.0, 1.0] and model.b.tolist() == [2.0]


def test_weight_perturbation_costs():
    """AMP: one gradient of the method's loss per inner step; AWP: one."""
    assert AMP(steps=3).cost(5.0) == 15.0
    assert AWP().cost(5.0) == 5.0


# --- mixup / CutMix / k-mixup ---------------------------------------------------------------------

def test_mixing_method_loss_is_soft_cross_entropy_of_the_mixed_target():
    model = Linear(4, 3)
    x = torch.rand(2, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    target = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]], dtype=torch.float64)
    log_p = _log_softmax(model(x))
    expected = -(target * log_p).sum(1).mean()
    for name in ("mixup", "cutmix", "kmixup"):
        out = _method(name).loss(model, (x, target))
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12), name
        assert out.targets.tolist() == [0, 2]


def test_mix_targets_by_hand_with_per_example_weights():
    """λ_i onehot(y_i) + (1 - λ_i) onehot(y_π(i)), with one λ per example (a [B] tensor)."""
    y, partner = torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])
    target = mix_targets(y, partner, torch.tensor([0.25, 1.0, 0.5], dtype=torch.float64), 3, torch.float64)
    assert target.tolist() == [[0.25, 0.75, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    assert mix_targets(y, partner, 0.75, 3, torch.float64).tolist() == [
        [0.75, 0.25, 0.0], [0.0, 0.75, 0.25], [0.25, 0.0, 0.75]]


def test_mixup_method_uses_its_alpha():
    """alpha = 1e4: λ ≈ 1/2, so every example mixed with another keeps about half its label."""
    x = torch.rand(8, 1, 2, 2, generator=_gen(0))
    y = torch.arange(8)
    method = _method("mixup", mix_alpha=1e4, num_classes=8)
    for seed in range(5):
        x_mix, target = method.prepare(None, x, y, generator=_gen(seed))
        own = target[torch.arange(8), y]
        mixed = own < 1
        assert mixed.any() and ((own[mixed] - 0.5).abs() < 0.05).all()


def test_cut_box_has_side_sqrt_one_minus_lambda_and_centre_inside():
    """lam = 3/4 on an 8 x 32 image: a 4 x 16 box (side ratio sqrt(1/4)), centred at a pixel of
    the image, so never empty, and of full size when the centre is far enough from the edges."""
    x = torch.zeros(1, 1, 8, 32)
    full = 0
    for seed in range(40):
        y1, y2, x1, x2 = cut_box(8, 32, 0.75, x, _gen(seed))
        assert 0 <= y1 < y2 <= 8 and 0 <= x1 < x2 <= 32
        assert y2 - y1 <= 4 and x2 - x1 <= 16
        full += (y2 - y1, x2 - x1) == (4, 16)
    assert full >= 5


def test_cutmix_uses_its_alpha():
    """alpha = 1e3: λ ≈ 1/2, an 11 x 11 box on 16 x 16 images, so λ' = 1 - area/256 stays in
    [1 - 121/256, 1 - 25/256] (a corner-clipped box keeps at least 5 x 5)."""
    x = torch.rand(4, 1, 16, 16, generator=_gen(0))
    y = torch.arange(4)
    for seed in range(40):
        lam = cutmix_batch(x, y, num_classes=4, alpha=1e3, generator=_gen(seed)).lam
        assert 1 - 121 / 256 - 1e-9 <= lam <= 1 - 25 / 256 + 1e-9


def test_kmixup_matches_each_k_batch_by_squared_distance(monkeypatch):
    """With the two random sides fixed, each pair of k-batches is matched by the permutation
    minimising the summed SQUARED Euclidean distance (found here by brute force), and the
    partner of side A's i-th point is the side-B point matched to it."""
    sides = iter([torch.arange(6), torch.tensor([5, 1, 3, 0, 4, 2])])
    monkeypatch.setattr(kmixup_module, "random_partner", lambda x, g: next(sides))
    # points where the squared-distance matching differs from the L1 and the Euclidean one
    pts = torch.tensor([[4.0, 3.5], [3.0, 2.5], [3.0, 0.0], [0.5, 3.0], [1.0, 1.0], [0.0, 0.5]],
                       dtype=torch.float64)
    x = pts.view(6, 1, 1, 2)
    partner = kmixup_partner(x, 3, None)
    expected = {}
    for group_a, group_b in (([0, 1, 2], [5, 1, 3]), ([3, 4, 5], [0, 4, 2])):
        def cost(perm):
            return sum(((pts[i] - pts[group_b[j]]) ** 2).sum().item() for i, j in zip(group_a, perm))
        best = min(itertools.permutations(range(3)), key=cost)
        expected.update({i: group_b[j] for i, j in zip(group_a, best)})
    assert partner.tolist() == [expected[i] for i in range(6)]


def test_kmixup_method_mixes_across_k_batches():
    """k = 2 on a batch of 8: the two sides are different random orders, so examples are mixed
    with other examples (k >= B would match the batch with itself: no mixing)."""
    x = torch.rand(8, 1, 2, 2, generator=_gen(0))
    y = torch.arange(8)
    method = _method("kmixup", k=2, num_classes=8)
    moved = [not torch.allclose(method.prepare(None, x, y, generator=_gen(s))[0], x, atol=1e-4) for s in range(5)]
    assert all(moved)
    assert torch.equal(kmixup_partner(x, 8, _gen(0)), torch.arange(8))


# --- the registry ---------------------------------------------------------------------------------

def test_build_method_refuses_an_option_the_method_does_not_take():
    with pytest.raises(UserError, match=r"^method 'gaussian' does not take copies; its options: sigma$"):
        build_method("gaussian", copies=3)
    assert build_method("gaussian", sigma=None).sigma == 0.25       # None: the default


@pytest.mark.parametrize("dtype, expected", [(torch.float64, torch.float64), (torch.float32, torch.float32),
                                             (torch.bfloat16, torch.float32)])
def test_global_norm_keeps_float64_and_widens_half_precision(dtype, expected):
    """||(3, 4, 12)|| = 13; float64 weights keep their precision (1 + 1e-12 survives), bf16 ones
    are summed in float32."""
    norm = global_norm([torch.tensor([3.0, 4.0], dtype=dtype), torch.tensor([12.0], dtype=dtype)])
    assert norm.dtype == expected and norm.item() == 13.0
    tiny = global_norm([torch.tensor([1.0 + 1e-12], dtype=torch.float64)])
    assert tiny.item() == 1.0 + 1e-12
