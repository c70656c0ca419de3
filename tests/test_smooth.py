"""Smooth: exact answers for deterministic classifiers, statistical coverage for linear ones,
packing invariance of certify_batch, ties, PREDICT's test."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from robustmaxup.certify import ABSTAIN, Certificate, Smooth, bounds
from robustmaxup.certify.smooth import top_class, top_two
from classifiers import Constant, LinearK, Votes, gen, linear_points  # noqa: E402


class Linear2(nn.Module):
    """Binary linear classifier f(x) = [w.x + b > 0], as two logits [0, w.x + b]."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.b = float(b)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


# ----------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("n,alpha,sigma", [(1000, 0.001, 0.25), (100, 0.01, 0.5), (20, 0.05, 1.0)])
def test_constant_classifier_exact_radius(n, alpha, sigma):
    smooth = Smooth(Constant(3), 10, sigma)
    cert = smooth.certify(torch.rand(1, 8, 8), n0=50, n=n, alpha=alpha, batch_size=64, generator=gen(0))
    assert isinstance(cert, Certificate)
    assert cert.prediction == 3
    assert cert.counts == tuple(n if c == 3 else 0 for c in range(10))
    assert cert.p_lower == pytest.approx(alpha ** (1 / n), abs=1e-12)
    assert abs(cert.radius - sigma * norm.ppf(alpha ** (1 / n))) < 1e-9
    assert smooth.predict(torch.rand(1, 8, 8), n=n, alpha=alpha, batch_size=64, generator=gen(1)) == 3


def test_too_few_samples_abstain_and_warn(caplog):
    smooth = Smooth(Constant(2), 10, 0.25)
    with caplog.at_level("WARNING"):
        cert = smooth.certify(torch.rand(1, 4, 4), n0=5, n=9, alpha=0.001, batch_size=10, generator=gen(0))
        smooth.certify(torch.rand(1, 4, 4), n0=5, n=9, alpha=0.001, batch_size=10, generator=gen(0))
    assert cert.prediction == ABSTAIN and cert.radius == 0.0
    assert cert.p_lower == pytest.approx(0.001 ** (1 / 9))
    assert caplog.text.count("never certify") == 1  # warned once, before sampling


def test_ties_abstain():
    # exactly half the votes for each class, in every chunk: a tie in n0 and in n
    smooth = Smooth(Votes([1, 0], 2), 2, 0.25)
    cert = smooth.certify(torch.rand(1, 2, 2), n0=100, n=1000, alpha=0.001, batch_size=1000, generator=gen(0))
    assert cert.counts == (500, 500)
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.p_lower < 0.5
    assert smooth.predict(torch.rand(1, 2, 2), n=1000, alpha=0.5, batch_size=1000) == ABSTAIN


def test_n0_tie_break_is_lowest_class_and_deterministic():
    assert top_class(np.array([3, 5, 5, 1])) == 1
    assert top_two(np.array([3, 5, 5, 1])) == (1, 2)
    assert top_two(np.array([7, 0, 7])) == (0, 2)


def test_predict_abstains_when_binomial_test_fails():
    x = torch.rand(1, 2, 2)
    smooth = Smooth(Votes([1, 1, 1, 0, 0], 2), 2, 0.25)  # exactly 60 % votes for class 1
    # 12 vs 8: two-sided p = 0.503 > alpha
    assert smooth.predict(x, n=20, alpha=0.05, batch_size=100) == ABSTAIN
    assert bounds.binomial_test_pvalue(12, 8) > 0.05
    # 600 vs 400: p ~ 3e-10
    assert smooth.predict(x, n=1000, alpha=0.001, batch_size=100) == 1
    # certify agrees: 0.6 lower-bounded above 1/2 -> class 1, radius sigma * Phi^-1(p_lower)
    cert = Smooth(Votes([1, 1, 1, 0, 0], 2), 2, 0.25).certify(x, 100, 1000, 0.001, 100)
    assert cert.prediction == 1 and cert.counts == (400, 600)
    assert cert.radius == pytest.approx(0.25 * norm.ppf(bounds.clopper_pearson_lower(600, 1000, 0.001)))


def test_noise_has_standard_deviation_sigma():
    # f(x + delta) = [delta_0 > sigma]: P = 1 - Phi(1) = 0.1587
    sigma, n = 0.3, 40_000

    class Threshold(nn.Module):
        def forward(self, z):
            return torch.stack([torch.zeros(z.shape[0]), (z[:, 0, 0, 0] - 0.5 - sigma).sign()], 1)

    x = torch.full((1, 2, 2), 0.5)
    counts = Smooth(Threshold(), 2, sigma).sample_counts(x[None], n, 4000, [gen(5)])[0]
    p = 1 - norm.cdf(1.0)
    assert abs(counts[1] - n * p) < 5 * math.sqrt(n * p * (1 - p))


# ----------------------------------------------------------------------------- packing
def test_certify_batch_equals_one_by_one():
    torch.manual_seed(0)
    model = LinearK(64, 10, seed=1).eval()
    xs = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    smooth = Smooth(model, 10, 0.5, noise_chunk=100)
    seeds = [11, 12, 13, 14, 15]
    one = [smooth.certify(xs[i], 100, 2350, 0.001, 1000, gen(s)) for i, s in enumerate(seeds)]
    assert len({c.counts for c in one}) == 5 and any(min(c.counts) < max(c.counts) - 5 for c in one)
    for batch_size in (1000, 130, 4000):
        packed = smooth.certify_batch(xs, 100, 2350, 0.001, batch_size, [gen(s) for s in seeds])
        assert packed == one
    # predict too, and any subset/order of images gives the same per-image answer
    p_one = [smooth.predict(xs[i], 700, 0.01, 300, gen(s)) for i, s in enumerate(seeds)]
    order = [3, 0, 4]
    p_sub = smooth.predict_batch(xs[order], 700, 0.01, 300, [gen(seeds[i]) for i in order])
    assert p_sub == [p_one[i] for i in order]
    # a different seed gives different votes
    other = smooth.certify(xs[0], 100, 2350, 0.001, 1000, gen(99))
    assert other.counts != one[0].counts


def test_bad_arguments():
    smooth = Smooth(Constant(0), 10, 0.25)
    x = torch.rand(1, 4, 4)
    from robustmaxup.errors import UserError

    for kwargs in ({"alpha": 0.0}, {"alpha": 1.5}, {"n": 0}, {"n0": 0}, {"batch_size": 0}):
        args = {"n0": 10, "n": 100, "alpha": 0.01, "batch_size": 10, **kwargs}
        with pytest.raises(UserError):
            smooth.certify(x, **args)
    with pytest.raises(UserError):
        Smooth(Constant(0), 10, 0.0)


# ----------------------------------------------------------------------------- coverage
SIGMA, ALPHA, N0, N, D = 0.25, 0.01, 64, 500, 256


def _trials(num_models, per_model, seed):
    """Random (w, b) per model and inputs x (pixels in [0, 1]) whose normalised margin
    t = (w.x+b)/|w| is uniform on (-4 sigma, 4 sigma). Truth: smoothed class [t > 0], certified
    radius |t|."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_models):
        t = rng.uniform(-4 * SIGMA, 4 * SIGMA, size=per_model)
        w, b, x = linear_points(rng, D, t)
        out.append((torch.tensor(w), b, x, t))
    return out


def _failures(trials, seed, one_by_one=0):
    """Run CERTIFY on every trial; return (failures, certified, close) counts."""
    fails = certified = close = total = 0
    for j, (w, b, xs, t) in enumerate(trials):
        smooth = Smooth(Linear2(w, b), 2, SIGMA)
        gens = [gen(seed * 100_000 + j * 1000 + i) for i in range(len(xs))]
        if j < one_by_one:
            certs = [smooth.certify(xs[i], N0, N, ALPHA, 1000, gens[i]) for i in range(len(xs))]
        else:
            certs = smooth.certify_batch(xs, N0, N, ALPHA, 20_000, gens)
        for cert, ti in zip(certs, t):
            total += 1
            if cert.prediction == ABSTAIN:
                continue
            certified += 1
            true_class, true_radius = int(ti > 0), abs(ti)
            if cert.prediction != true_class or cert.radius > true_radius + 1e-9:
                fails += 1
            elif cert.radius > 0.7 * true_radius:
                close += 1
    return fails, certified, close, total


def _allowed(total):
    return ALPHA * total + 3 * math.sqrt(total * ALPHA * (1 - ALPHA))


def test_coverage_linear_classifier():
    # 20 models x 100 inputs; the first 3 models (300 trials) go through Smooth.certify one by one
    fails, certified, close, total = _failures(_trials(20, 100, seed=0), seed=0, one_by_one=3)
    assert total == 2000
    assert fails <= _allowed(total), (fails, total)
    # not vacuous: most trials certify, many with a radius close to (but below) the truth
    assert certified >= 0.8 * total
    assert close >= 0.4 * total


@pytest.mark.parametrize("broken", ["point_estimate", "wald"])
def test_coverage_check_catches_broken_bounds(monkeypatch, broken):
    def point_estimate(k, n, alpha):
        return k / n

    def wald(k, n, alpha):
        p = k / n
        return p - norm.ppf(1 - alpha) * math.sqrt(p * (1 - p) / n)

    monkeypatch.setattr(bounds, "clopper_pearson_lower", {"point_estimate": point_estimate, "wald": wald}[broken])
    fails, _, _, total = _failures(_trials(10, 100, seed=1), seed=1)
    assert fails > _allowed(total), (fails, total)


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_fp32_on_confident_inputs():
    from robustmaxup.checkpoints import build_model_for

    model = build_model_for("digits_cnn", "digits").cuda().eval()
    x = torch.rand(2, 1, 8, 8, device="cuda")
    gens = [torch.Generator(device="cuda").manual_seed(s) for s in (0, 1)]
    fast = Smooth(model, 10, 0.25, precision="bf16").certify_batch(x, 100, 2000, 0.001, 1000, gens)
    gens = [torch.Generator(device="cuda").manual_seed(s) for s in (0, 1)]
    again = Smooth(model, 10, 0.25, precision="bf16").certify_batch(x, 100, 2000, 0.001, 1000, gens)
    assert fast == again
    for cert in fast:
        assert sum(cert.counts) == 2000
    gens = [torch.Generator(device="cuda").manual_seed(s) for s in (0, 1)]
    exact = Smooth(model, 10, 0.25, precision="fp32").certify_batch(x, 100, 2000, 0.001, 1000, gens)
    for a, b in zip(fast, exact):  # same noise, bf16 vs fp32 logits: votes nearly equal
        assert sum(abs(i - j) for i, j in zip(a.counts, b.counts)) <= 0.05 * 2000


# --- exact checks of which votes CERTIFY and PREDICT use (mutation audit, 2026-11-24) ----------
def test_certify_selects_on_the_n0_draws_then_counts_the_next_n():
    """c_A comes from the n0 selection draws, p_lower from the *next* n draws of the same
    generator (Cohen et al.'s two samples). At P = 1/2 the two often disagree: choosing c_A
    from the estimation counts, or reusing the selection noise, changes the certificate."""
    e0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    smooth, x, differ = Smooth(Linear2(e0, 0.0), 2, 0.25), torch.zeros(1, 1, 2, dtype=torch.float64), 0
    for seed in range(20):
        g = gen(seed)
        selection = smooth.sample_counts(x[None], 1, 100, [g])[0]
        estimation = smooth.sample_counts(x[None], 300, 100, [g])[0]
        cert = smooth.certify(x, 1, 300, 0.01, 100, gen(seed))
        c_a = int(np.argmax(selection))
        assert cert.counts == tuple(int(c) for c in estimation)
        assert cert.p_lower == bounds.clopper_pearson_lower(int(estimation[c_a]), 300, 0.01)
        differ += c_a != int(np.argmax(estimation))
    assert differ >= 3  # the test can tell the two choices apart


def test_certify_abstains_when_p_lower_is_exactly_one_half():
    """Two unanimous votes at alpha = 0.25: the Clopper-Pearson bound is 0.25**(1/2) = 0.5
    exactly, and CERTIFY needs p_lower > 1/2."""
    cert = Smooth(Constant(1), 10, 0.25).certify(torch.rand(1, 4, 4), 5, 2, 0.25, 10, gen(0))
    assert cert.p_lower == 0.5 and cert.prediction == ABSTAIN and cert.radius == 0.0


def test_predict_accepts_a_p_value_equal_to_alpha():
    """PREDICT returns c_A when p <= alpha: 10 unanimous votes give p = 2 * 0.5**10 exactly."""
    alpha, smooth = 2 * 0.5 ** 10, Smooth(Constant(3), 10, 0.25)
    assert smooth.predict(torch.rand(1, 4, 4), 10, alpha, 100, gen(0)) == 3
    assert smooth.predict(torch.rand(1, 4, 4), 9, alpha, 100, gen(0)) == ABSTAIN


def test_predict_tests_the_top_two_counts_only():
    """Votes 500/300/200: the test is 500 vs 300 (p ~ 1e-10), not 500 vs the 500 others."""
    smooth = Smooth(Votes([0] * 5 + [1] * 3 + [2] * 2, 3), 3, 0.25)
    assert smooth.predict(torch.rand(1, 2, 2), 1000, 0.001, 1000, gen(0)) == 0


@pytest.mark.parametrize("fold_bn", [False, True])
def test_the_model_can_be_trained_after_certification_converted_it(fold_bn):
    """channels_last converts the caller's model in place on first use (as on CUDA); done under
    certify's inference_mode, the weights became inference tensors and backward then failed."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))
    model(torch.rand(2, 3, 6, 6))
    smooth = Smooth(model, 3, 0.25, channels_last=True, fold_bn=fold_bn)
    smooth.certify(torch.rand(3, 6, 6), n0=10, n=20, alpha=0.001, batch_size=20, generator=gen(0))
    assert not any(p.is_inference() for p in model.parameters())
    model.train()
    model(torch.rand(2, 3, 6, 6)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
