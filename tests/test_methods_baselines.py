"""Method-specific correctness of the training baselines: SmoothAdv, SmoothMix, consistency, MACER,
PGD-AT, TRADES, the AWP/AMP weight perturbations and the mixup/CutMix/k-mixup augmentations.
(The generic registry contract lives in test_methods_contract.py.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from robustmaxup.checkpoints import build_model_for
from robustmaxup.data import load_split
from robustmaxup.errors import UserError
from robustmaxup.methods import AUGMENTATIONS, METHODS, PERTURBATIONS, build_method
from robustmaxup.methods.amp import AMP
from robustmaxup.methods.augment import draw_noise, sample_beta
from robustmaxup.methods.awp import AWP
from robustmaxup.methods.consistency import consistency_terms
from robustmaxup.methods.cutmix import cutmix_batch
from robustmaxup.methods.families import reference_start
from robustmaxup.methods.kmixup import kmixup_batch, kmixup_partner, ot_match
from robustmaxup.methods.macer import radius_hinge
from robustmaxup.methods.maxup import MaxUp
from robustmaxup.methods.mixup import mixup_batch
from robustmaxup.methods.trades import kl_attack_loss, trades_kl

ADVERSARIAL_PREPARES = {
    "pgd_at": dict(attack_steps=3),
    "trades": dict(attack_steps=3),
    "smoothadv": dict(attack_steps=2, copies=2),
    "smoothmix": dict(attack_steps=2, copies=2),
}


@pytest.fixture(scope="module")
def batch():
    """32 real digits images [32, 1, 8, 8] in [0, 1] with labels."""
    split = load_split("digits", "train")
    return split.batch(list(range(32)))


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model_for("digits_cnn", "digits")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _method(name: str, **kw):
    method = build_method(name, **kw)
    method.setup(num_classes=10)
    return method


# --- attacks inside training ----------------------------------------------------------------

@pytest.mark.parametrize("name,norm", [("pgd_at", "Linf"), ("pgd_at", "L2"), ("trades", "Linf"), ("trades", "L2")])
def test_pgd_training_attack_stays_in_ball_and_box(batch, name, norm):
    x, y = batch
    method = _method(name, norm=norm, attack_steps=10)
    model = _model().train()
    prepared = method.prepare(model, x, y, generator=_gen(0))
    x_adv = prepared[0] if name == "pgd_at" else prepared[1]
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert size.max() <= method.attack_eps * (1 + 1e-5) + 1e-7
    assert size.max() > 0.5 * method.attack_eps          # the attack moved
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_norm_defaults_are_resolved_and_recorded():
    assert _method("pgd_at").hparams()["attack_eps"] == pytest.approx(8 / 255)
    l2 = _method("pgd_at", norm="L2").hparams()
    assert l2["attack_eps"] == pytest.approx(128 / 255) and l2["attack_step_size"] == pytest.approx(15 / 255)
    assert _method("trades", attack_eps=0.1).hparams()["attack_eps"] == 0.1
    with pytest.raises(UserError, match=r"^norm must be one of"):
        build_method("pgd_at", norm="L1")


@pytest.mark.parametrize("name", sorted(ADVERSARIAL_PREPARES))
def test_attacks_leave_no_grads_and_no_bn_updates(batch, name):
    x, y = batch
    method = _method(name, **ADVERSARIAL_PREPARES[name])
    model = _model().train()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    method.prepare(model, x, y, generator=_gen(0))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers()), "attack changed BN statistics"
    assert model.training and all(p.requires_grad for p in model.parameters())


def _fitted_model(x, y, steps: int = 40) -> torch.nn.Module:
    """digits_cnn fitted to (x, y) by plain SGD (a model with non-trivial accuracy), in eval mode."""
    model = _model().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_adversarial_evaluate_is_robust_accuracy(batch):
    x, y = batch
    model = _fitted_model(x, y)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert clean.sum() >= 16
    tiny = _method("pgd_at", attack_eps=1e-6, attack_step_size=1e-6, eval_steps=2)
    strong = _method("trades", attack_eps=0.3, attack_step_size=0.1, eval_steps=5)
    with torch.no_grad():
        same = tiny.evaluate(model, x, y, generator=_gen(0))
        robust = strong.evaluate(model, x, y, generator=_gen(0))
    assert robust.dtype == torch.bool and robust.shape == y.shape
    assert torch.equal(same, clean)
    assert robust.sum() < clean.sum()


# --- SmoothAdv ----------------------------------------------------------------------------------

def test_smoothadv_warmup_schedule():
    method = _method("smoothadv", smoothadv_eps=1.0, warmup=10)
    assert method.current_eps == 1.0                      # before the engine's first call
    expected = {0: 0.1, 1: 0.2, 4: 0.5, 9: 1.0, 10: 1.0, 50: 1.0}
    for epoch, share in expected.items():
        method.on_epoch_start(epoch, 60)
        assert method.current_eps == pytest.approx(share)
    for warmup in (0, 1):
        no_warm = _method("smoothadv", smoothadv_eps=0.5, warmup=warmup)
        no_warm.on_epoch_start(0, 60)
        assert no_warm.current_eps == 0.5


def test_smoothadv_trains_on_same_noise_inside_warmed_ball(batch):
    x, y = batch
    x, y = x[:16], y[:16]
    method = _method("smoothadv", smoothadv_eps=1.0, warmup=10, attack_steps=3, copies=3)
    method.on_epoch_start(1, 60)                          # ε = 0.2
    model = _model().train()
    xs, ys = method.prepare(model, x, y, generator=_gen(5))
    noise = draw_noise(x, 3, method.sigma, _gen(5))        # the same first draw
    x_adv = (xs.view(3, *x.shape) - noise)                 # [m, B, ...]: one x_adv under all copies
    assert torch.allclose(x_adv[1], x_adv[0], atol=1e-6) and torch.allclose(x_adv[2], x_adv[0], atol=1e-6)
    norms = (x_adv[0] - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.2 + 1e-5 and norms.max() > 0.1
    assert torch.equal(ys, y.repeat(3))
    single = _method("smoothadv", copies=3, multi_noise=False).prepare(model, x, y, generator=_gen(5))
    assert single[0].shape == x.shape and torch.equal(single[1], y)


def _salman_pgd_l2(model, x, y, noise, eps, steps):
    """An independent re-statement of SmoothAdv's multi-noise PGD_L2 (Hadisalman/smoothing-adversarial
    code/attacks.py:140-180): from x, steps of length 2ε/steps along the normalised gradient of
    -log mean_i softmax(f(x' + δ_i))_y, then clip the point to [0, 1], then renorm δ to ε."""
    m, b = noise.shape[0], x.shape[0]
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        probs = F.softmax(model(((x + delta).unsqueeze(0) + noise).flatten(0, 1)), -1).view(m, b, -1).mean(0)
        (grad,) = torch.autograd.grad(F.nll_loss(torch.log(probs.clamp(min=1e-20)), y), delta)
        with torch.no_grad():
            step = delta + 2 * eps / steps * grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            step = (x + step).clamp(0, 1) - x
            delta = step.renorm(2, 0, eps).requires_grad_(True)
    return (x + delta).detach()


def test_smoothadv_attack_is_the_reference_attack_box_then_ball(batch):
    """SmoothAdv's adversary equals the reference's, whose clip-then-renorm order lands on a
    different point than ball-then-box once both constraints bind (digits have many 0 pixels)."""
    x, y = batch
    x, y = x[:16].double(), y[:16]
    model = _model().double().eval()
    method = _method("smoothadv", smoothadv_eps=1.0, attack_steps=3, copies=2)
    xs, _ = method.prepare(model, x, y, generator=_gen(6))
    noise = draw_noise(x, 2, method.sigma, _gen(6))               # the same first draw
    ours = xs.view(2, *x.shape)[0] - noise[0]
    reference = _salman_pgd_l2(model, x, y, noise, 1.0, 3)
    assert (ours - reference).abs().max() < 1e-6
    from robustmaxup.attacks import smooth_pgd
    other_order = smooth_pgd(model, x, y, eps=1.0, sigma=0.25, m=2, steps=3, noise=noise)
    assert (other_order - reference).abs().max() > 1e-2             # the order matters here


# --- SmoothMix ----------------------------------------------------------------------------------

def test_smoothmix_mixes_on_the_adversarial_segment(batch):
    x, y = batch
    x, y = x[:16], y[:16]
    model = _model().train()
    method = _method("smoothmix", attack_steps=3, attack_step_size=0.25, copies=2)
    noise, x_clean, x_mix, lam, y_out = method.prepare(model, x, y, generator=_gen(1))
    assert noise.shape == (2, *x.shape) and torch.equal(x_clean, x) and torch.equal(y_out, y)
    assert lam.min() >= 0 and lam.max() <= 0.5
    step = (x_mix - x).flatten(1).norm(dim=1)
    assert step.max() <= 0.5 * 3 * 0.25 + 1e-5            # λ ≤ 1/2 of an (≤ T·α)-long walk
    assert x_mix.min() >= 0 and x_mix.max() <= 1
    out = method.loss(model, (noise, x_clean, x_mix, lam, y_out))
    with torch.no_grad():   # the Gaussian base loss on the same noisy copies (same batch statistics)
        ce = F.cross_entropy(model((x.unsqueeze(0) + noise).flatten(0, 1)), y.repeat(2))
    mixup_term = (out.loss.detach() - ce) / method.smoothmix_eta  # warm = 1 before any on_epoch_start
    assert torch.isfinite(out.loss) and mixup_term >= -1e-6


def test_smoothmix_one_step_adversary_is_held_in_warmed_radius(batch):
    x, y = batch
    x, y = x[:16], y[:16]
    model = _model().train()
    method = _method("smoothmix", attack_steps=3, attack_step_size=0.5, mix_step=1, warmup=10)
    method.on_epoch_start(1, 50)                         # warm = 0.2: the one-step point within 0.1
    noise, _, x_mix, lam, _ = method.prepare(model, x, y, generator=_gen(2))
    # x_mix = (1-λ) x_1 + λ x_T with ||x_1 - x|| <= 0.1 and ||x_T - x|| <= 1.5
    bound = (1 - lam) * 0.1 + lam * 1.5
    assert ((x_mix - x).flatten(1).norm(dim=1) <= bound + 1e-5).all()
    with pytest.raises(UserError, match=r"^mix_step must be smaller"):
        build_method("smoothmix", mix_step=4, attack_steps=4)


def test_smoothmix_clean_terms_are_taken_at_the_one_step_adversary(batch):
    """With mix_step = s >= 1 the reference replaces its inputs by the attacker's start point x_s
    (jh-jeong/smoothmix code/train.py:167) before the cross-entropy, p̄ and the mask: so the
    prepared clean point is x_s, not x, and with eta = 0 the loss is CE(f(x_s + δ_i), y)."""
    x, y = batch
    x, y = x[:16].double(), y[:16]
    model = _model().double().eval()
    method = _method("smoothmix", attack_steps=3, attack_step_size=0.5, mix_step=1, smoothmix_eta=0.0)
    noise, x_s, x_mix, lam, _ = method.prepare(model, x, y, generator=_gen(4))
    moved = (x_s - x).flatten(1).norm(dim=1)
    assert moved.max() > 0.1 and (moved <= 0.5 + 1e-9).all()       # one step of length α = 0.5
    out = method.loss(model, (noise, x_s, x_mix, lam, y))
    with torch.no_grad():
        at_start = F.cross_entropy(model((x_s.unsqueeze(0) + noise).flatten(0, 1)), y.repeat(2))
        at_x = F.cross_entropy(model((x.unsqueeze(0) + noise).flatten(0, 1)), y.repeat(2))
    assert out.loss.item() == pytest.approx(at_start.item(), rel=1e-12)
    assert abs(at_start.item() - at_x.item()) > 1e-3


def test_smoothmix_mixup_term_is_calibration_kl(batch):
    """With x_mix = x and λ = 0 the target is p̄(x) itself: the mixup term is the consistency KL
    (mean over copies of KL(p̄ || p_i)) on correctly classified examples."""
    x, y = batch
    x, y = x[:16].double(), y[:16]
    model = _model().double().eval()
    method = _method("smoothmix", copies=3, smoothmix_eta=1.0)
    noise = draw_noise(x, 3, 0.25, _gen(3))
    lam = torch.zeros(16, dtype=x.dtype)
    out = method.loss(model, (noise, x, x, lam, y))
    with torch.no_grad():
        logits = model((x.unsqueeze(0) + noise).flatten(0, 1)).view(3, 16, -1)
        kl, _ = consistency_terms(logits)
        correct = (F.softmax(logits, -1).mean(0).argmax(1) == y).double()
        ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(3))
    mixup_term = out.loss.item() - ce.item()                 # eta = 1, warm = 1
    assert mixup_term == pytest.approx((correct * kl).mean().item(), rel=1e-9, abs=1e-12)
    assert out.loss.item() == pytest.approx(ce.item() + (correct * kl).mean().item(), rel=1e-9)


# --- consistency and MACER ---------------------------------------------------------------------

def test_consistency_terms_closed_forms_and_gradients():
    torch.manual_seed(0)
    same = torch.randn(1, 5, 7, dtype=torch.float64).repeat(3, 1, 1)
    kl, entropy = consistency_terms(same)
    p = F.softmax(same[0], -1)
    assert torch.allclose(kl, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(entropy, -(p * p.log()).sum(-1))
    logits = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    kl, entropy = consistency_terms(logits)
    assert (kl > 0).all() and (entropy > 0).all() and (entropy <= math.log(7)).all()
    assert torch.autograd.gradcheck(lambda z: torch.cat(consistency_terms(z)), (logits,))


def test_consistency_loss_matches_formula(batch):
    x, y = batch
    x, y = x[:8].double(), y[:8]
    model = _model().double().eval()
    method = _method("consistency", copies=3, lbd=7.0, consistency_eta=0.3)
    prepared = method.prepare(model, x, y, generator=_gen(0))
    out = method.loss(model, prepared)
    logits = model(prepared[0]).view(3, 8, -1)
    p = F.softmax(logits, -1)
    mean = p.mean(0)
    kl = (mean * (mean.log() - p.log())).sum(-1).mean(0)
    entropy = -(mean * mean.log()).sum(-1)
    ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(3))
    assert out.loss.item() == pytest.approx((ce + (7.0 * kl + 0.3 * entropy).mean()).item(), rel=1e-10)


def _macer_reference(logits, y, sigma, lbd, gamma, beta):
    """MACER's loss written out directly (Φ⁻¹ via the Normal distribution)."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=logits.dtype), torch.tensor(1.0, dtype=logits.dtype))
    smoothed = F.softmax(logits, -1).mean(0)
    ce = -torch.log(smoothed.gather(1, y[:, None]).squeeze(1) + 1e-10).mean()
    pb = F.softmax(beta * logits, -1).mean(0)
    top, idx = pb.topk(2, -1)
    total = logits.new_zeros(())
    for i in range(len(y)):
        if idx[i, 0] != y[i]:
            continue
        gap = normal.icdf(top[i, 0]) - normal.icdf(top[i, 1])
        if torch.isfinite(gap) and gap <= gamma:
            total = total + (gamma - gap)
    return ce + lbd * sigma / 2 * total / len(y)


def test_macer_loss_and_gradient_match_reference(batch):
    x, y = batch
    x, y = x[:12].double(), y[:12]
    model = _model().double().eval()
    method = _method("macer", copies=4, macer_beta=2.0, macer_gamma=8.0, lbd=12.0)
    prepared = method.prepare(model, x, y, generator=_gen(0))
    # make some examples correct, so that the hinge is active
    boost = 3 * F.one_hot(y, 10).double() * (torch.arange(12) % 2 == 0).double().unsqueeze(1)
    logits = (model(prepared[0]).view(4, 12, -1) + boost).detach().requires_grad_(True)
    hinge = radius_hinge(logits, y, beta=2.0, gamma=8.0)
    wrong = F.softmax(2.0 * logits, -1).mean(0).argmax(1) != y
    assert (hinge > 0).sum() >= 6 and wrong.sum() >= 3 and (hinge[wrong] == 0).all()
    assert (hinge >= 0).all() and (hinge <= 8.0).all()
    reference = _macer_reference(logits, y, 0.25, 12.0, 8.0, 2.0)
    ours = F.nll_loss(torch.log(F.softmax(logits, -1).mean(0) + 1e-10), y) + 12.0 * 0.25 / 2 * hinge.sum() / 12
    assert ours.item() == pytest.approx(reference.item(), rel=1e-10)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(g_ours, g_ref, rtol=1e-8, atol=1e-12)
    out = method.loss(model, prepared)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_macer_hinge_ignores_wrong_and_saturated_examples():
    y = torch.tensor([0, 1, 2])
    logits = torch.zeros((2, 3, 4), dtype=torch.float64)
    logits[:, 0] = torch.tensor([50.0, -50.0, -50.0, -50.0])   # p̂_y = 1 exactly: infinite gap -> none
    logits[:, 1] = torch.tensor([0.0, 0.5, 0.0, 1.0])          # wrong class on top, finite gap -> none
    logits[:, 2] = torch.tensor([0.0, 0.0, 0.1, 0.0])          # correct, small margin -> active
    hinge = radius_hinge(logits, y, beta=1.0, gamma=8.0)
    assert hinge[0] == 0 and hinge[1] == 0 and 0 < hinge[2] < 8.0
    # the same row with the label on top is active
    assert radius_hinge(logits[:, 1:2], torch.tensor([3]), beta=1.0, gamma=8.0)[0] > 0


# --- TRADES -------------------------------------------------------------------------------------

def test_trades_loss_is_ce_when_x_adv_equals_x(batch):
    x, y = batch
    model = _model().train()
    method = _method("trades", trades_beta=6.0)
    out = method.loss(model, (x, x.clone(), y))
    torch.manual_seed(0)
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    assert trades_kl(logits, model(x.clone())).item() == 0.0
    assert out.loss.item() == ce.item()             # the KL term adds exactly nothing


def test_trades_kl_direction_matches_reference():
    torch.manual_seed(0)
    clean, adv = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    reference = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
    assert trades_kl(clean, adv).item() == pytest.approx(reference.item(), rel=1e-12)
    assert trades_kl(adv, clean).item() != pytest.approx(reference.item(), rel=1e-3)
    per_example = kl_attack_loss(adv, F.softmax(clean, 1))
    assert per_example.mean().item() == pytest.approx(reference.item(), rel=1e-12)


def test_trades_attack_increases_the_kl(batch):
    x, y = batch
    model = _model().eval()
    method = _method("trades", attack_steps=5)
    x_clean, x_adv, _ = method.prepare(model, x, y, generator=_gen(0))
    with torch.no_grad():
        start = x + 0.001 * torch.randn(x.shape, generator=_gen(0))
        kl_start = trades_kl(model(x), model(start.clamp(0, 1)))
        kl_adv = trades_kl(model(x), model(x_adv))
        p = F.softmax(model(x), 1)
        per_example = kl_attack_loss(model(x_adv), p)
    assert kl_adv > 10 * kl_start
    assert per_example.mean().item() == pytest.approx(kl_adv.item(), rel=1e-3, abs=1e-7)


# --- AWP / AMP ----------------------------------------------------------------------------------

def _gaussian_step(x, y):
    method = _method("gaussian")
    model = _model().train()
    prepared = method.prepare(model, x, y, generator=_gen(0))
    return model, (lambda: method.loss(model, prepared).loss)


def test_awp_perturbation_is_layerwise_relative_and_restored_exactly(batch):
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_clean = loss_fn().item()
    with AWP(gamma=0.02).perturbed(model, loss_fn):
        assert all(p.grad is None for p in model.parameters()), "the search left gradients"
        for n, p in model.named_parameters():
            v = p.detach() - before[n]
            if p.dim() > 1:
                assert v.norm().item() == pytest.approx(0.02 * before[n].norm().item(), rel=1e-4)
            else:
                assert torch.equal(v, torch.zeros_like(v)), f"AWP moved {n}"
        loss_inside = loss_fn()
        loss_inside.backward()
    assert loss_inside.item() > loss_clean
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_weight_perturbation_gradient_is_taken_at_perturbed_weights(batch):
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    with AMP(eps=0.3).perturbed(model, loss_fn) as deltas:
        loss_fn().backward()
        shifted = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert len(deltas) == len(list(model.parameters()))
    reference, _ = _gaussian_step(x, y)
    with torch.no_grad():
        for n, p in reference.named_parameters():
            p.copy_(shifted[n])
    method = _method("gaussian")
    prepared = method.prepare(reference, x, y, generator=_gen(0))
    method.loss(reference, prepared).loss.backward()
    for n, p in reference.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-6), n


@pytest.mark.parametrize("per_tensor", [False, True])
def test_amp_perturbation_lies_in_its_ball_and_increases_loss(batch, per_tensor):
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_clean = loss_fn().item()
    amp = AMP(eps=0.2, steps=3, step_size=0.5, per_tensor=per_tensor)
    with amp.perturbed(model, loss_fn):
        deltas = [p.detach() - before[n] for n, p in model.named_parameters()]
        loss_inside = loss_fn().item()
    norms = torch.stack([d.norm() for d in deltas])
    if per_tensor:
        assert norms.max() <= 0.2 * (1 + 1e-5) and norms.norm() > 0.2
    else:
        assert norms.norm().item() == pytest.approx(0.2, rel=1e-4)   # ascent reaches the sphere
    assert loss_inside > loss_clean
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_perturbation_warmup_and_validation(batch):
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    awp = AWP(gamma=0.01, warmup=2)
    awp.on_epoch_start(1, 10)
    with awp.perturbed(model, loss_fn) as deltas:
        assert deltas == [] and all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    awp.on_epoch_start(2, 10)
    with awp.perturbed(model, loss_fn):
        assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert set(PERTURBATIONS.names()) >= {"awp", "amp"}
    with pytest.raises(UserError, match="awp_gamma "):
        AWP(gamma=-1.0)
    with pytest.raises(UserError, match="amp_steps"):
        AMP(steps=0)


def test_weights_restored_even_on_error(batch):
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with AMP(eps=0.5).perturbed(model, loss_fn):
            raise RuntimeError("boom")
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


# --- mixup / CutMix / k-mixup -------------------------------------------------------------------

def _check_mass(mixed, y):
    one_hot = F.one_hot(y, 10).double()
    target = mixed.target.double()
    assert torch.allclose(target.sum(1), torch.ones(len(y), dtype=torch.float64), atol=1e-6)
    assert sorted(mixed.partner.tolist()) == list(range(len(y))), "partner is not a permutation"
    lam = torch.as_tensor(mixed.lam, dtype=torch.float64)
    expected = lam * one_hot + (1 - lam) * one_hot[mixed.partner]
    assert torch.allclose(target, expected, atol=1e-6)
    assert torch.allclose(target.sum(0), one_hot.sum(0), atol=1e-5), "class mass not conserved"


@pytest.mark.parametrize("mix", [mixup_batch, cutmix_batch, kmixup_batch])
def test_mixing_conserves_label_mass(batch, mix):
    x, y = batch
    for seed in range(3):
        mixed = mix(x, y, num_classes=10, alpha=1.0, generator=_gen(seed))
        _check_mass(mixed, y)
        assert mixed.x.shape == x.shape and 0 <= mixed.lam <= 1
        if mix is not cutmix_batch:
            assert torch.allclose(mixed.x, mixed.lam * x + (1 - mixed.lam) * x[mixed.partner], atol=1e-6)


def test_cutmix_label_weight_is_the_pasted_area():
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.arange(8)
    for seed in range(6):
        mixed = cutmix_batch(x, y, num_classes=10, alpha=1.0, generator=_gen(seed))
        for i in range(8):
            j = int(mixed.partner[i])
            if j == i:
                continue
            from_partner = (mixed.x[i] == x[j]).all(0) & (mixed.x[i] != x[i]).any(0)
            from_self = (mixed.x[i] == x[i]).all(0)
            assert bool((from_partner | from_self).all())
            assert from_partner.float().mean().item() == pytest.approx(1 - mixed.lam, abs=1e-9)


def test_beta_draws_follow_the_distribution():
    g = _gen(0)
    x = torch.zeros(1)
    uniform = torch.tensor([sample_beta(1.0, x, g) for _ in range(2000)])
    assert abs(uniform.mean() - 0.5) < 0.03 and abs(uniform.var() - 1 / 12) < 0.01
    peaked = torch.tensor([sample_beta(0.2, x, g) for _ in range(2000)])
    edges = ((peaked < 0.1) | (peaked > 0.9)).float().mean()
    assert edges > 0.55        # Beta(0.2, 0.2) puts ~64% of its mass within 0.1 of the ends


def test_ot_match_is_the_optimal_permutation():
    torch.manual_seed(0)
    for n in (1, 2, 4, 6):
        cost = torch.rand(5, n, n)
        cols = ot_match(cost)
        for g in range(5):
            perm = cols[g].tolist()
            assert sorted(perm) == list(range(n))
            ours = sum(cost[g, i, perm[i]].item() for i in range(n))
            brute = min(sum(cost[g, i, p[i]].item() for i in range(n)) for p in itertools.permutations(range(n)))
            assert ours == pytest.approx(brute, abs=1e-6)
            assert ours <= cost[g].diagonal().sum().item() + 1e-6


def test_kmixup_matching_properties():
    torch.manual_seed(1)
    x = torch.rand(24, 1, 4, 4)
    # one group holding the whole batch: OT between the batch and itself is the identity
    assert torch.equal(kmixup_partner(x, 24, _gen(0)), torch.arange(24))
    # groups of k: cheaper than the random pairing that k = 1 gives, on average over draws
    def cost(partner):
        return ((x - x[partner]) ** 2).sum().item()
    ot = sum(cost(kmixup_partner(x, 8, _gen(s))) for s in range(10))
    rand = sum(cost(kmixup_partner(x, 1, _gen(s))) for s in range(10))
    assert ot < 0.8 * rand
    partner = kmixup_partner(x[:22], 8, _gen(3))          # 8 + 8 + a last group of 6
    assert sorted(partner.tolist()) == list(range(22))


@pytest.mark.parametrize("augment", ["mixup", "cutmix", "kmixup"])
def test_mixing_augmentations_inside_maxup(batch, augment):
    x, y = batch
    assert AUGMENTATIONS.get(augment).mixes_labels
    method = MaxUp(augment=augment, copies=3, sigma=0.0)
    method.setup(num_classes=10)
    model = _model().train()
    xs, ts = method.prepare(model, x, y, generator=_gen(0))
    assert xs.shape == x.shape and ts.shape == (len(y), 10)
    assert torch.allclose(ts.sum(1), torch.ones(len(y)))
    out = method.loss(model, (xs, ts))
    assert torch.isfinite(out.loss)


# --- every baseline lowers its own loss on a fixed batch -----------------------------------------

SHORT_RUNS = {
    "smoothadv": dict(copies=2, attack_steps=1, smoothadv_eps=0.25, warmup=0),
    "smoothmix": dict(copies=2, attack_steps=2, attack_step_size=0.25, warmup=0),
    "consistency": dict(),
    "macer": dict(copies=4),
    "pgd_at": dict(attack_steps=2, attack_eps=0.1, attack_step_size=0.06),
    "trades": dict(attack_steps=2, attack_eps=0.1, attack_step_size=0.06),
    "mixup": dict(),
    "cutmix": dict(),
    "kmixup": dict(k=4),
}
# MACER's loss jumps by up to lbd·σ/2·gamma/B whenever an example becomes correct, and the Φ⁻¹
# gradients are steep: it needs the paper's small learning rate (0.01) to decrease steadily.
LEARNING_RATE = {"macer": 0.01}


STEPS = 25


def _own_loss(method, model, x, y) -> float:
    prepared = method.prepare(model, x, y, generator=_gen(123))
    with torch.no_grad():
        return method.loss(model, prepared).loss.item()


@pytest.mark.parametrize("name,perturbation", [(n, None) for n in SHORT_RUNS] + [("pgd_at", "awp"), ("gaussian", "amp")])
def test_short_digits_run_lowers_own_loss(batch, name, perturbation):
    x, y = batch
    x, y = x[:16], y[:16]
    method = _method(name, **SHORT_RUNS.get(name, {}))
    wrapper = {None: None, "awp": AWP(gamma=5e-3), "amp": AMP(eps=0.1)}[perturbation]
    model = _model(1).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE.get(name, 0.1), momentum=0.9)
    before = _own_loss(method, model, x, y)
    gen = _gen(7)
    for _ in range(STEPS):
        prepared = method.prepare(model, x, y, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        if wrapper is None:
            method.loss(model, prepared).loss.backward()
        else:
            with wrapper.perturbed(model, lambda: method.loss(model, prepared).loss):
                method.loss(model, prepared).loss.backward()
        optimizer.step()
    after = _own_loss(method, model, x, y)
    assert math.isfinite(after) and after < 0.8 * before, (before, after)


def test_every_baseline_is_registered_with_its_family():
    families = {n: METHODS.get(n).family for n in SHORT_RUNS}
    assert families == {
        "smoothadv": "smoothing", "smoothmix": "smoothing", "consistency": "smoothing", "macer": "smoothing",
        "pgd_at": "adversarial", "trades": "adversarial", "mixup": "standard", "cutmix": "standard",
        "kmixup": "standard",
    }
    for bad in [dict(name="macer", copies=1), dict(name="consistency", lbd=-1.0),
                dict(name="kmixup", k=0), dict(name="mixup", alpha=0.0), dict(name="smoothadv", smoothadv_eps=0.0),
                dict(name="cutmix", cutmix_prob=1.5), dict(name="pgd_at", attack_train_mode="yes")]:
        name = bad.pop("name")
        with pytest.raises(UserError):
            build_method(name, **bad)


# --- behaviour fixes of the faithful-recipes audit (each test fails on the former behaviour) ------

def test_amp_clips_each_tensor_by_default_as_the_reference(batch):
    """hiyouga/AMP-Regularizer amp.py:54-56 clips every parameter tensor to norm eps: each
    tensor's perturbation is within eps and the largest ones reach it (the former default, one
    global ball, leaves every tensor strictly inside)."""
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    amp = AMP(eps=0.05)
    assert amp.per_tensor is True
    with amp.perturbed(model, loss_fn):
        norms = torch.stack([(p.detach() - before[n]).norm() for n, p in model.named_parameters()])
    assert (norms <= 0.05 * (1 + 1e-5)).all()
    assert norms.max() >= 0.05 * (1 - 1e-5)
    assert (norms >= 0.05 * (1 - 1e-5)).sum() >= 2 and norms.norm() > 0.05 * 1.2   # several reach it


def test_cutmix_method_mixes_a_batch_with_probability_cutmix_prob(batch):
    """clovaai/CutMix-PyTorch: each batch is mixed with probability --cutmix_prob (0.5 in the
    CIFAR command); the rest train on the clean batch with its hard labels."""
    x, y = batch
    method = _method("cutmix")
    assert method.cutmix_prob == 0.5
    aug = method.augmentation()
    unchanged = 0
    for seed in range(200):
        x_out, target = aug(x, y, num_classes=10, generator=_gen(seed))
        if torch.equal(x_out, x):
            unchanged += 1
            assert torch.equal(target, F.one_hot(y, 10).to(x.dtype))
    assert 70 <= unchanged <= 130, unchanged                  # ~Binomial(200, 0.5) (+ empty boxes)
    never = _method("cutmix", cutmix_prob=0.0).augmentation()
    assert all(torch.equal(never(x, y, num_classes=10, generator=_gen(s))[0], x) for s in range(20))
    assert AUGMENTATIONS.get("cutmix")().prob == 1.0          # as a MaxUp augmentation: always mixed


def test_kmixup_alpha_default_is_the_reference_examples():
    """AnmingGu/kmixup-cifar10 README.md:35: --alpha=10.0 --mixupBatch=16."""
    assert _method("kmixup").hparams() == {"mix_alpha": 10.0, "k": 16}
    assert AUGMENTATIONS.get("kmixup")().mix_alpha == 10.0
    g, x = _gen(0), torch.zeros(1)
    lams = torch.tensor([sample_beta(10.0, x, g) for _ in range(500)])
    assert abs(lams.mean() - 0.5) < 0.02 and lams.std() < 0.12   # Beta(10, 10), not uniform


def test_pgd_at_l2_random_start_radius_is_uniform_as_in_the_reference():
    """locuslab/robust_overfitting train_cifar.py:79-84: direction ~ N(0, I) normalised, radius
    eps * U(0, 1). (The former start, uniform in the ball's volume, put every radius near eps.)"""
    x = torch.full((4000, 1, 8, 8), 0.5)
    method = _method("pgd_at", norm="L2", attack_eps=0.4, attack_steps=1, attack_step_size=1e-12)
    model = _model().eval()
    y = torch.zeros(4000, dtype=torch.long)
    x_adv = method.attack(model, x, y, steps=1, generator=_gen(0))
    radius = (x_adv - x).flatten(1).norm(dim=1) / 0.4
    assert radius.max() <= 1 + 1e-5
    assert abs(radius.mean().item() - 0.5) < 0.02 and abs((radius < 0.5).float().mean().item() - 0.5) < 0.03
    start = reference_start(x[:2000], 8 / 255, "Linf", _gen(1))
    assert start.abs().max() <= 8 / 255 and abs(start.mean().item()) < 1e-3


def test_pgd_at_attacks_in_train_mode_when_asked_and_in_the_recipe(batch):
    """Rice et al. attack inside the training loop with the model in train mode (batch-norm
    batch statistics); the pgd_at recipe does the same. Running statistics stay frozen."""
    from robustmaxup.train import TrainConfig

    assert TrainConfig.from_recipe("pgd_at", dataset="cifar10", out="r").method_args["attack_train_mode"] is True
    assert _method("pgd_at").attack_train_mode is False
    x, y = batch
    model = _model().train()
    modes: list[bool] = []
    hook = model.net.register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    _method("pgd_at", attack_steps=2, attack_train_mode=True).prepare(model, x, y, generator=_gen(0))
    assert modes and all(modes), "the attack ran in eval mode"
    modes.clear()
    _method("pgd_at", attack_steps=2).prepare(model, x, y, generator=_gen(0))
    hook.remove()
    assert modes and not any(modes)
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert model.training


def test_awp_steps_at_the_perturbed_weights_then_removes_the_perturbation(batch):
    """csdongxian/AWP: perturb, gradient, optimizer.step(), restore (subtract v). With SGD's
    weight decay the update is -lr (g(w + v) + wd (w + v)), not -lr (g(w + v) + wd w)."""
    x, y = batch
    model, loss_fn = _gaussian_step(x, y)
    lr, wd = 0.1, 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    awp = AWP(gamma=0.05)
    assert awp.step_at_perturbed
    with awp.perturbed(model, loss_fn) as deltas:
        loss_fn().backward()
        at_step = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
    v = dict(zip([n for n, p in model.named_parameters() if p.dim() > 1], deltas))
    for n, p in model.named_parameters():
        shift = v.get(n, torch.zeros_like(p))
        assert torch.allclose(at_step[n], w[n] + shift, atol=1e-7)
        expected = w[n] - lr * (grads[n] + wd * (w[n] + shift))
        assert torch.allclose(p.detach(), expected, atol=1e-6), n
    # the former order (restore, then step) is still available
    before = AWP(gamma=0.05, restore_after_step=False)
    assert not before.step_at_perturbed


# --- found missing by a mutation audit (2026-11-24): every weight of each loss applied -------
def _double_digits(name, **kw):
    """A float64 digits model in eval mode, the set-up method, and a random batch of 12."""
    model, method, g = _model().double().eval(), _method(name, **kw), _gen(0)
    x = torch.rand(12, 1, 8, 8, generator=g, dtype=torch.float64)
    return model, method, x, torch.randint(0, 10, (12,), generator=g)


def test_trades_loss_weights_the_kl_by_beta():
    model, method, x, y = _double_digits("trades", trades_beta=3.0)
    with torch.no_grad():
        model.net.fc.weight.mul_(20)              # confident predictions: a sizeable KL
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    out = method.loss(model, (x, x_adv, y))
    kl = trades_kl(model(x), model(x_adv))
    assert kl.item() > 1e-3
    assert out.loss.item() == pytest.approx((F.cross_entropy(model(x), y) + 3.0 * kl).item(), rel=1e-10)


def test_macer_loss_is_its_formula():
    model, method, x, y = _double_digits("macer", copies=4, sigma=0.5, lbd=3.0, macer_beta=1.0)
    with torch.no_grad():                         # make the label win on half the batch
        model.net.fc.bias.zero_()
    y = model(x).argmax(1).where(torch.arange(12) % 2 == 0, y)
    prepared = method.prepare(model, x, y, generator=torch.Generator().manual_seed(1))
    logits = model(prepared[0]).view(4, 12, -1)
    hinge = radius_hinge(logits, y, beta=1.0, gamma=8.0)
    assert (hinge > 0).sum() >= 3
    ce = F.nll_loss(torch.log(F.softmax(logits, -1).mean(0) + 1e-10), y)
    expected = ce + 3.0 * 0.5 / 2 * hinge.sum() / 12
    assert method.loss(model, prepared).loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_smoothmix_mixup_term_is_scaled_by_the_warmup():
    model, method, x, y = _double_digits("smoothmix", copies=2, smoothmix_eta=2.0, warmup=10)
    noise = draw_noise(x, 2, 0.25, torch.Generator().manual_seed(2))
    lam = torch.full((12,), 0.3, dtype=x.dtype)
    x_mix = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    y = model(x).argmax(1)                        # every example correct: the mask is on
    ce = F.cross_entropy(model((x.unsqueeze(0) + noise).flatten(0, 1)), y.repeat(2)).item()
    full = method.loss(model, (noise, x, x_mix, lam, y)).loss.item() - ce
    method.on_epoch_start(2, 100)                 # warm = 3/10
    warm = method.loss(model, (noise, x, x_mix, lam, y)).loss.item() - ce
    assert full > 1e-4 and warm == pytest.approx(0.3 * full, rel=1e-9)


def test_amp_step_inside_the_ball_is_not_rescaled(digits_batch):
    x, y = digits_batch
    model, method = _model().train(), _method("gaussian")
    prepared = method.prepare(model, x, y, generator=_gen(0))
    loss_fn = lambda: method.loss(model, prepared).loss  # noqa: E731
    before = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(loss_fn(), list(model.parameters()))
    with AMP(eps=1e3, steps=1, step_size=1e-3).perturbed(model, loss_fn):
        for p, w, g in zip(model.parameters(), before, grads):
            assert torch.allclose(p.detach() - w, 1e-3 * g, atol=1e-7)
