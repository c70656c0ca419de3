"""Exact details of the certification core (``certify/bounds.py``, ``certify/smooth.py``) that a
mutation audit (2026-11-24) found unpinned: values recomputed independently (numerical
integration, ``scipy.stats.beta`` quantiles, explicit betting capital, hand-computed constants),
the float edges of every ``>`` / ``>=`` that decides a certificate or a stop, the alpha split of
the default confidence sequence at each look, and how the noise is drawn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import beta as beta_fn
from scipy.stats import beta, norm
from torch import nn

from classifiers import Constant, LinearK, Scripted, Votes, gen
from robustmaxup.certify import ABSTAIN, Smooth, bounds
from robustmaxup.errors import UserError


# ----------------------------------------------------------------------------- mixture evidence
def _mixture_by_quadrature(k: int, t: int, m: float, a: float, b: float) -> float:
    """log E_{q ~ Beta(a, b) | q > m}[(q/m)^k ((1-q)/(1-m))^(t-k)], by numerical integration."""
    # the prior density's (1 - q)^(b - 1) goes into quad's algebraic weight (singular at 1 if b < 1)
    num = integrate.quad(lambda q: (q / m) ** k * ((1 - q) / (1 - m)) ** (t - k) * q ** (a - 1),
                         m, 1, weight="alg", wvar=(0.0, b - 1.0), epsabs=0, epsrel=1e-12, limit=200)[0]
    return math.log(num / beta_fn(a, b) / beta.sf(m, a, b))


@pytest.mark.parametrize("a,b", [(1.0, 0.1), (1.0, 1.0), (2.0, 0.5), (0.5, 3.0)])
@pytest.mark.parametrize("k,t,m", [(8, 10, 0.6), (20, 20, 0.9), (3, 12, 0.2), (15, 30, 0.45)])
def test_one_sided_mixture_evidence_is_the_truncated_prior_integral(a, b, k, t, m):
    """The closed form (both the a = 1 shortcut for the prior's tail and the betainc branch)
    equals the defining integral over the prior truncated to q > m."""
    got = float(bounds.one_sided_mixture_log_evidence(k, t, m, a, b))
    assert got == pytest.approx(_mixture_by_quadrature(k, t, m, a, b), rel=1e-7, abs=1e-9)


def test_the_hypothesis_p_at_most_one_is_never_rejected():
    """M_t(1) is undefined in closed form (0 * log 0) for unanimous votes; since ``p <= 1``
    always holds it must read as no evidence (-inf), never as infinite evidence."""
    assert bounds.one_sided_mixture_log_evidence(5, 5, 1.0) == -np.inf
    assert bounds.one_sided_mixture_log_evidence(5, 5, 1.0, 2.0, 0.5) == -np.inf


@pytest.mark.parametrize("k,t", [(1, 1), (7, 10), (1000, 1000), (990, 1000), (51_234, 100_000)])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_mixture_lower_is_a_rejected_point_on_the_boundary(k, t, alpha):
    """L is on the rejected (conservative) side: M_t(L) >= 1/alpha; and it is the boundary to
    1e-9: a hair above it is no longer rejected. Returning the other end of the bisection
    bracket, a coarser bisection or another level breaks one of the two."""
    a, b = bounds.MIXTURE_PRIOR
    low = bounds.one_sided_mixture_lower(k, t, alpha)
    assert bounds.one_sided_mixture_log_evidence(k, t, low, a, b) >= math.log(1 / alpha)
    assert bounds.one_sided_mixture_log_evidence(k, t, low + 1e-9, a, b) < math.log(1 / alpha)


@pytest.mark.parametrize("a,b", [(2.0, 1.0), (1.0, 2.0), (0.5, 0.5)])
def test_two_sided_mixture_upper_mirrors_the_prior(a, b):
    """0 successes in 1 draw, prior Beta(a, b): M(m) = E[1 - q] / (1 - m) = b / ((a + b)(1 - m)),
    so the upper end is 1 - alpha b / (a + b) (by hand); the lower end of 1 of 1 is alpha a / (a + b)."""
    alpha = 0.01
    assert bounds.beta_mixture_upper(0, 1, alpha, a=a, b=b) == pytest.approx(1 - alpha * b / (a + b), rel=1e-12)
    assert bounds.beta_mixture_lower(1, 1, alpha, a=a, b=b) == pytest.approx(alpha * a / (a + b), rel=1e-12)


def test_two_sided_mixture_evidence_at_the_ends_of_the_interval():
    """0 log 0 = 0 at m = 1 (and m = 0): 5 of 5 under Beta(1/2, 1/2) gives
    M = B(5.5, 0.5) / B(0.5, 0.5) = C(10, 5) / 2**10 = 63/256 (by hand), not +inf, so p = 1 is not
    rejected; one failure makes p = 1 impossible (+inf)."""
    assert math.exp(bounds.beta_mixture_log_evidence(5, 5, 1.0)) == pytest.approx(63 / 256, rel=1e-12)
    assert math.exp(bounds.beta_mixture_log_evidence(0, 5, 0.0)) == pytest.approx(63 / 256, rel=1e-12)
    assert bounds.beta_mixture_log_evidence(4, 5, 1.0) == math.inf
    assert bounds.beta_mixture_log_evidence(1, 5, 0.0) == math.inf

def test_documented_values_of_the_default_sequence():
    """Numbers quoted in the docstrings (prior Beta(1, 0.1), 0.75 / 0.25 alpha split)."""
    assert round(bounds.one_sided_mixture_lower(1000, 1000, 0.001), 5) == 0.99287
    assert bounds.MIXTURE_PRIOR == (1.0, 0.1) and bounds.CP_SHARE == 0.25
    cp = beta.ppf(0.001 * 0.25, 99_000, 1001)
    assert bounds.mixture_cp_lower(99_000, 100_000, 0.001, n_max=100_000) == pytest.approx(cp, rel=1e-12)


@pytest.mark.parametrize("k,t", [(60, 100), (99, 100), (100, 100), (950, 1000)])
def test_mixture_cp_spends_three_quarters_of_alpha_before_n_max_and_a_quarter_at_it(k, t):
    """Before n_max: the mixture (prior Beta(1, 0.1)) at 0.75 alpha only, no Clopper-Pearson;
    at n_max: the larger of that and the one-sided CP bound at 0.25 alpha."""
    alpha = 0.01
    mix = bounds.one_sided_mixture_lower(k, t, 0.75 * alpha, a=1.0, b=0.1)
    assert bounds.mixture_cp_lower(k, t, alpha, n_max=t + 100) == mix
    cp = beta.ppf(0.25 * alpha, k, t - k + 1)
    assert bounds.mixture_cp_lower(k, t, alpha, n_max=t) == pytest.approx(max(mix, cp), rel=1e-12)


def test_registered_default_adds_clopper_pearson_only_at_the_last_look():
    """Through the registry (what Smooth uses): an intermediate look gets the mixture alone; the
    planned last look (looks[-1], not the current one) gets the Clopper-Pearson stage."""
    seq, alpha = bounds.CONFIDENCE_SEQUENCES["mixture_cp"], 0.001
    looks = seq.schedule(2000, 100)
    ks = np.array([[95, 190, 280]])
    mid = seq.lower(ks, np.asarray(looks[:3]), alpha, looks)[0]
    assert mid == pytest.approx(bounds.one_sided_mixture_lower(280, 300, 0.00075), abs=0)
    assert mid < beta.ppf(0.00025, 280, 21)            # so adding CP here would raise it
    last = seq.lower(np.array([[1900]]), np.array([2000]), alpha, looks)[0]
    assert last == pytest.approx(beta.ppf(0.00025, 1900, 101), rel=1e-12)
    up = seq.upper(ks, np.asarray(looks[:3]), alpha, looks)[0]
    assert up == pytest.approx(bounds.one_sided_mixture_upper(280, 300, 0.00075), abs=0)


def test_registered_staged_cp_uses_alpha_over_the_planned_stages():
    """staged_cp at any stage is one-sided CP at alpha / (number of planned stages), not at
    alpha / (stages seen so far)."""
    seq, alpha = bounds.CONFIDENCE_SEQUENCES["staged_cp"], 0.001
    looks = seq.schedule(100_000, 100)
    assert len(looks) == 12
    ks = np.array([[990]])
    got = seq.lower(ks, np.array([looks[0]]), alpha, looks)[0]
    assert got == pytest.approx(beta.ppf(alpha / 12, 990, looks[0] - 990 + 1), rel=1e-10)


def test_default_schedule_is_the_documented_one():
    """33 looks up to 100,000, starting 100, 200, ... (ratio 1.2, multiples of 100)."""
    looks = bounds.confidence_sequence().schedule(100_000, 100)
    assert len(looks) == 33 and looks[:5] == (100, 200, 300, 400, 500) and looks[-1] == 100_000


# ----------------------------------------------------------------------------- betting
def _capital(ks, ts, m, shrink, max_fraction=0.95):
    """The betting capital for H_m, draw by draw: bet lambda = nu / m, nu from the draws
    before the block only, capital *= 1 + lambda (x - m)."""
    cap, k_prev, t_prev = 1.0, 0, 0
    for k, t in zip(ks, ts):
        est = (k_prev + 0.5) / (t_prev + 1)
        nu = min(max(shrink * (est - m) / (1 - m), 0.0), max_fraction)
        lam = nu / m
        for x in [1] * (k - k_prev) + [0] * ((t - t_prev) - (k - k_prev)):
            cap *= 1 + lam * (x - m)
        k_prev, t_prev = k, t
    return cap


@pytest.mark.parametrize("ks,ts", [([100, 200], [100, 200]), ([40, 140, 170], [50, 150, 200]),
                                   ([45, 60, 150], [50, 100, 200])])
@pytest.mark.parametrize("shrink", [0.5, 1.0])
def test_betting_lower_is_the_last_grid_point_whose_capital_reaches_one_over_alpha(ks, ts, shrink):
    """Recomputed from the definition on a coarse grid: every grid point up to L has capital
    >= 1/alpha, the next one does not (bets are predictable: the current block's draws never
    set the block's bet)."""
    alpha, grid = 0.01, np.round(np.arange(0.02, 0.99, 0.01), 2)
    low = bounds.betting_lower(np.array(ks), np.array(ts), alpha, shrink=shrink, grid=grid)
    caps = np.array([_capital(ks, ts, m, shrink) for m in grid])
    lead = int(np.argmin(np.append(caps >= 1 / alpha - 1e-9 * (1 / alpha), False)))
    # the float edge is not what this checks
    assert np.all(np.abs(caps - 1 / alpha) > 1e-6)
    assert lead > 0 and low == grid[lead - 1]
    up = bounds.betting_upper(np.array(ks), np.array(ts), alpha, shrink=shrink, grid=grid)
    caps_up = np.array([_capital([t - k for k, t in zip(ks, ts)], ts, m, shrink) for m in grid])
    lead_up = int(np.argmin(np.append(caps_up >= 1 / alpha, False)))
    assert up == pytest.approx(1 - (grid[lead_up - 1] if lead_up else 0.0), abs=1e-15)


def test_registered_betting_bets_the_full_kelly_fraction():
    seq = bounds.CONFIDENCE_SEQUENCES["betting"]
    ks, ts = np.array([[90, 170, 380]]), np.array([100, 200, 400])
    assert seq.lower(ks, ts, 0.001, (100, 200, 400))[0] == bounds.betting_lower(ks[0], ts, 0.001, shrink=1.0)


# ----------------------------------------------------------------------------- futility projection
def test_projected_successes_hand_computed():
    """draws * rate + z sqrt(draws rate (1 - rate)), rounded up, capped at draws; z = 3."""
    assert bounds.PROJECTION_Z == 3.0
    assert bounds.projected_successes(np.array([100.0]), 0.5).tolist() == [65.0]          # 50 + 3 * 5
    assert bounds.projected_successes(np.array([100.0]), 0.5, z=2.0).tolist() == [60.0]
    assert bounds.projected_successes(np.array([100.0]), 0.99).tolist() == [100.0]        # 99 + 2.98 capped
    assert bounds.projected_successes(np.array([400.0]), 0.9).tolist() == [378.0]         # 360 + 18
    assert bounds.projected_successes(np.array([400.0]), 1.5).tolist() == [400.0]         # rate clipped


def test_best_lower_projects_from_the_current_look():
    """After look 1 (100 draws, 60 successes) of (100, 200, 500): all 400 later draws succeed
    (460 of 500), or the projection at rate 0.5 grants ceil(200 + 3 * 10) = 230 (290 of 500)."""
    seq, looks, alpha = bounds.confidence_sequence("mixture"), (100, 200, 500), 0.01
    lower = lambda k: seq.lower(np.array([[k]]), np.array([500]), alpha, looks)[0]  # noqa: E731
    assert seq.best_lower(np.array([[60]]), looks, alpha)[0] == lower(460)
    assert seq.best_lower(np.array([[60]]), looks, alpha, np.array([0.5]))[0] == lower(290)


# ----------------------------------------------------------------------------- decisions at the edges
def _exact_edge_p_lower():
    """(k, n, alpha, sigma, r) with CP lower bound p > 1/2 and Phi(r / sigma) == p exactly."""
    for n in (50, 100, 200):
        for k in range(n // 2 + 10, n):
            p = float(bounds.clopper_pearson_lower_array(k, n, 0.01))
            r = float(norm.ppf(p))
            if p > 0.5 and float(norm.cdf(r)) == p and r > 0:
                return k, n, 0.01, 1.0, r
    raise AssertionError("no exact float round trip found")


def test_certified_at_its_float_edges():
    """p_lower == 1/2 (2 of 2 at alpha 1/4: 0.25 ** 0.5) certifies nothing, not even r = 0;
    p_lower == Phi(r / sigma) exactly certifies r (the radius test is >=)."""
    assert bounds.clopper_pearson_lower_array(2, 2, 0.25) == 0.5
    assert not bounds.certified_at(2, 2, 0.25, 0.0, 0.25)
    k, n, alpha, sigma, r = _exact_edge_p_lower()
    assert bounds.certified_at(k, n, alpha, r, sigma)
    assert not bounds.certified_at(k - 1, n, alpha, r, sigma)


def test_min_samples_to_certify_radius_at_the_half_edge():
    """alpha = 1/4: 2 unanimous votes give exactly 1/2, which certifies nothing: 3 are needed
    (also for r = 0, where a search started below the bare minimum would stop at 2)."""
    assert bounds.min_samples_to_certify(0.25) == 3
    assert bounds.min_samples_to_certify_radius(0.0, 0.25, 0.25) == 3


def test_sequential_done_at_its_float_edges():
    """Certified is lower >= Phi(r/sigma) (and > 1/2), refuted is upper < Phi(r/sigma), out of
    reach is best < Phi(r/sigma), abstaining is upper <= 1/2: each exactly at the edge."""
    sigma = 0.25
    thr = bounds.radius_thresholds([0.25], sigma)
    t = float(thr[0])
    done = lambda lo, up, best, th=thr: bool(bounds.sequential_done(  # noqa: E731
        np.array([lo]), np.array([up]), np.array([best]), sigma, th)[0])
    assert done(t, 0.99, 0.99)                     # lower == threshold: certified
    assert not done(0.5, t, 0.99)                  # upper == threshold: not refuted
    assert not done(0.5, 0.99, t)                  # best == threshold: still reachable
    assert done(0.5, 0.99, t - 1e-12) and done(0.5, t - 1e-12, 0.99)
    zero = bounds.radius_thresholds([0.0], sigma)  # Phi(0) = 1/2
    assert not done(0.5, 0.9, 0.9, zero)           # lower == 1/2 does not certify r = 0
    assert done(0.5 + 1e-12, 0.9, 0.9, zero)
    assert done(0.3, 0.5, 0.9, zero)               # upper == 1/2: it will abstain


# ----------------------------------------------------------------------------- Smooth: noise
class Recorder(nn.Module):
    """Votes class 0 and keeps every noisy copy it is shown."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.num_classes, self.seen = num_classes, []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype)


@pytest.mark.parametrize("batch_size", [3, 7, 16, 1000])
def test_noise_is_sigma_times_chunked_draws_of_the_images_generator(batch_size):
    """Copy j is x + sigma * z_j, with z drawn from the image's generator in chunks of
    noise_chunk: n0 = 5 selection copies ([5]), then n = 17 estimation copies ([7, 7, 3]),
    whatever the batch size. (An odd number of pixels: one draw of 14 copies is not two of 7.)"""
    sigma, x = 0.3, torch.rand(1, 1, 3, dtype=torch.float64)
    model = Recorder()
    cert = Smooth(model, 2, sigma, noise_chunk=7).certify(x, 5, 17, 0.01, batch_size, gen(3))
    g = gen(3)
    z = torch.cat([torch.randn(s, 1, 1, 3, generator=g, dtype=torch.float64) for s in (5, 7, 7, 3)])
    seen = torch.cat(model.seen)
    assert seen.shape == (22, 1, 1, 3) and all(len(b) <= batch_size for b in model.seen)
    assert torch.allclose(seen, x + sigma * z, rtol=0, atol=1e-15)
    assert cert.counts == (17, 0)


def test_packing_is_invariant_for_an_odd_pixel_count():
    """certify_batch equals certify image by image when a forward pass holds several chunks of
    an image whose pixel count is odd (chunks must be drawn one by one)."""
    model = LinearK(3, 4, seed=2).eval()
    smooth = Smooth(model, 4, 1.0, noise_chunk=10)
    xs = torch.rand(3, 1, 1, 3, dtype=torch.float64)
    one = [smooth.certify(xs[i], 10, 95, 0.01, 10, gen(40 + i)) for i in range(3)]
    assert len({c.counts for c in one}) == 3
    for batch_size in (30, 95, 1000):
        assert smooth.certify_batch(xs, 10, 95, 0.01, batch_size, [gen(40 + i) for i in range(3)]) == one


def test_a_chunk_larger_than_the_batch_is_split_without_losing_copies():
    """noise_chunk 101 > batch_size 100: the 101 copies go through in two slices, all counted."""
    cert = Smooth(Constant(4, 5), 5, 0.25, noise_chunk=101).certify(torch.rand(1, 2, 2), 101, 101, 0.01, 100, gen(0))
    assert cert.counts == (0, 0, 0, 0, 101) and cert.p_lower == pytest.approx(0.01 ** (1 / 101), rel=1e-12)


def test_noise_follows_the_images_dtype_after_another_dtype():
    """The reused noise buffer is re-made for a new dtype: float64 images get float64 copies."""
    model = Recorder()
    smooth = Smooth(model, 2, 0.25)
    smooth.certify(torch.rand(1, 4, 4, dtype=torch.float64), 1, 10, 0.01, 100, gen(0))
    smooth.certify(torch.rand(1, 4, 4, dtype=torch.float32), 1, 10, 0.01, 100, gen(0))
    smooth.certify(torch.rand(1, 4, 4, dtype=torch.float64), 1, 10, 0.01, 100, gen(0))
    assert [b.dtype for b in model.seen] == [torch.float64] * 2 + [torch.float32] * 2 + [torch.float64] * 2


def test_defaults_chunk_and_cpu_precision():
    """Documented defaults: noise chunks of 100, and "auto" precision runs fp32 off CUDA."""
    smooth = Smooth(Constant(0), 10, 0.25)
    assert smooth.noise_chunk == 100
    assert smooth.autocast_dtype(torch.device("cpu")) is None
    assert smooth.autocast_dtype(torch.device("cuda")) == torch.bfloat16


def test_images_and_model_of_different_dtypes_are_refused():
    smooth = Smooth(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), 2, 0.25)
    with pytest.raises(UserError, match="float64"):
        smooth.certify(torch.rand(1, 2, 2, dtype=torch.float64), 1, 10, 0.01, 10, gen(0))


# ----------------------------------------------------------------------------- Smooth: decisions
def test_predict_uses_the_runner_up_not_the_smallest_count():
    """Votes 500 / 20 / 480: the test is 500 vs 480 (p ~ 0.55): abstain, although 500 vs 20
    would be decisive."""
    smooth = Smooth(Votes([0] * 25 + [1] + [2] * 24, 3), 3, 0.25)
    assert bounds.binomial_test_pvalue(500, 480) > 0.5
    assert smooth.predict(torch.rand(1, 2, 2), 1000, 0.01, 1000, gen(0)) == ABSTAIN


def test_predict_sequential_tests_leader_against_runner_up_only():
    """Votes 60 / 20 / 20 % of 3 classes: the evidence is that of 0.6 t successes in 0.8 t
    trials (the leader against the runner-up), so it stops at the first look where that
    reaches (C - 1) / alpha; counting the third class as failures would stop later."""
    alpha, n_max = 0.001, 20_000
    a, b = bounds.MIXTURE_PRIOR
    looks = bounds.look_schedule(n_max, 100)
    need = math.log(2 / alpha)
    stop = next(t for t in looks if bounds.one_sided_mixture_log_evidence(0.6 * t, 0.8 * t, 0.5, a, b) >= need)
    later = next(t for t in looks if bounds.one_sided_mixture_log_evidence(0.6 * t, t, 0.5, a, b) >= need)
    assert stop < later
    smooth = Smooth(Votes([0, 0, 0, 1, 2], 3), 3, 0.25)
    got = smooth.predict_sequential_details(torch.rand(1, 1, 2, 2), n_max, alpha, 1000, [gen(0)])[0]
    assert (got.prediction, got.n_used) == (0, stop)


@pytest.mark.parametrize("radii", [None, [0.25]])
def test_sequential_certify_counts_the_class_selected_on_the_n0_draws(radii):
    """Selection votes 0, 0, 0; every later vote is 1. c_A = 0 has no estimation votes: lower
    bound 0, upper bound below 1/2 at the first look, so it abstains there. Counting the
    estimation leader (class 1) for c_A would certify class 0 with a large radius."""
    model = Scripted([0] * 3 + [1] * 1000)
    cert = Smooth(model, 2, 0.25).certify_sequential(torch.rand(1, 2, 2), 3, 1000, 0.001, 100, radii, gen(0))
    assert (cert.prediction, cert.radius, cert.p_lower, cert.n_used) == (ABSTAIN, 0.0, 0.0, 100)
    assert cert.counts == (0, 100)


def test_sequence_warning_return_values():
    """Both warnings return whether the run can ever succeed: sequential CERTIFY with n_max = 10
    (never), 20,000 (yes); sequential PREDICT at its documented minimum, 14 (alpha 0.001, C = 10)."""
    smooth = Smooth(Constant(0), 10, 0.25)
    assert not smooth.warn_if_sequence_too_short(10, 0.001)
    assert smooth.warn_if_sequence_too_short(20_000, 0.001)
    assert smooth.warn_if_predict_sequence_too_short(14, 0.001)
    assert not smooth.warn_if_predict_sequence_too_short(13, 0.001)


def _alpha_with_threshold(evidence: float, num_classes: int) -> float:
    """An alpha whose sequential-PREDICT log threshold log((C - 1) / alpha) equals ``evidence``
    exactly in floating point (searched among the neighbours of the real-number solution)."""
    alpha = (num_classes - 1) * math.exp(-evidence)
    for _ in range(400):
        if bounds.predict_sequential_log_threshold(alpha, num_classes) == evidence:
            return alpha
        alpha = float(np.nextafter(alpha, 0.0 if bounds.predict_sequential_log_threshold(alpha, num_classes)
                                   < evidence else 1.0))
    raise AssertionError("no exact float threshold found")


@pytest.mark.parametrize("futility", ["unanimous", "projected"])
def test_predict_sequential_at_evidence_exactly_at_the_threshold(futility):
    """Unanimous votes, looks (10, 20), alpha chosen so that the evidence of 20 of 20 equals
    log((C - 1)/alpha) exactly: the first look is not futile (20 unanimous votes would reach
    the threshold: futility needs evidence < threshold), and the last look decides (>=)."""
    a, b = bounds.MIXTURE_PRIOR
    full = float(bounds.one_sided_mixture_log_evidence(np.int64(20), np.int64(20), 0.5, a, b))
    alpha = _alpha_with_threshold(full, 3)
    assert bounds.one_sided_mixture_log_evidence(10, 10, 0.5, a, b) < full
    smooth = Smooth(Constant(2, 3), 3, 0.25, noise_chunk=10)
    got = smooth.predict_sequential_details(torch.rand(1, 1, 2, 2), 20, alpha, 100, [gen(0)], futility=futility)[0]
    assert (got.prediction, got.n_used) == (2, 20)
