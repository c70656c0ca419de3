"""Sequential (anytime-valid) CERTIFY and PREDICT, and the confidence sequences behind them.

* bounds: exact small cases, closed forms, monotonicity, never tighter than fixed-n Clopper-Pearson
  where that must hold, and a simulation of simultaneous (every-t) validity;
* soundness of ``Smooth.certify_sequential_batch`` against linear classifiers whose smoothed
  ``p_A = Phi(margin / sigma)`` is known, with ``p_A`` placed exactly at ``Phi(r / sigma)`` for
  the target radius ``r`` (the hardest case) -- and the same check failing for the naive rule
  "re-check fixed-n Clopper-Pearson after every look", implemented below;
* exact stopping times for a constant classifier, early abstention, packing invariance.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from robustmaxup.certify import ABSTAIN, Certificate, Smooth, bounds
from robustmaxup.errors import UserError
from classifiers import Constant, LinearK, Scripted, Votes, gen  # noqa: E402

SEQ = bounds.confidence_sequence()


# ----------------------------------------------------------------------------- models


#: the decision boundary's pixel value: inputs are pixels in [0, 1], and a margin m in [-0.25, 0.75]
#: is the input x_0 = CENTER + m (``at_margin``)
CENTER = 0.25


def at_margin(margins, k: int = 2) -> torch.Tensor:
    """Float64 images [n, 1, 1, k] with x_0 = CENTER + margin (the rest CENTER), all in [0, 1]."""
    margins = torch.as_tensor(np.asarray(margins, dtype=np.float64).reshape(-1))
    xs = torch.full((len(margins), 1, 1, k), CENTER, dtype=torch.float64)
    xs[:, 0, 0, 0] += margins
    assert 0 <= xs.min() and xs.max() <= 1
    return xs


class Linear2(nn.Module):
    """f(x) = [m + b > 0] for the margin m = x_0 - CENTER, as two logits: P[f(x + delta) = 1] =
    Phi((m + b)/sigma)."""

    def __init__(self, b: float = 0.0) -> None:
        super().__init__()
        self.b = float(b)

    def forward(self, x):
        z = x.flatten(1)[:, 0] - CENTER + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


class Bins3(nn.Module):
    """Three classes by the margin's bin: at x_0 = CENTER, P = (0.4, 0.3, 0.3) exactly."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.c1, self.c2 = sigma * norm.ppf(0.4), sigma * norm.ppf(0.7)

    def forward(self, x):
        v = x.flatten(1)[:, 0] - CENTER
        cls = (v > self.c1).long() + (v > self.c2).long()
        return nn.functional.one_hot(cls, 3).to(x.dtype)


def allowed(trials: int, alpha: float) -> int:
    """Most false certifications a valid procedure shows (one-sided binomial test at 1e-3)."""
    return int(binom.ppf(1 - 1e-3, trials, alpha))


# ----------------------------------------------------------------------------- bounds: exact
def test_look_schedule():
    looks = bounds.look_schedule(100_000, 100)
    assert looks[0] == 100 and looks[-1] == 100_000
    assert all(t % 100 == 0 for t in looks) and all(b > a for a, b in zip(looks, looks[1:]))
    assert 30 <= len(looks) <= 50
    assert bounds.look_schedule(2000, 100, ratio=1.5) == (100, 200, 300, 500, 800, 1200, 1800, 2000)
    assert bounds.look_schedule(50, 100) == (50,)
    assert bounds.look_schedule(1234, 100)[-1] == 1234
    assert bounds.staged_schedule(100_000, stages=5) == (1000, 3200, 10000, 31600, 100000)
    for name, seq in bounds.CONFIDENCE_SEQUENCES.items():
        assert seq.schedule(100_000, 100)[-1] == 100_000, name


def test_mixture_closed_forms():
    # one-sided, uniform prior, 1 of 1: M(m) = (1 + 1/m) / 2 = 1/alpha  ->  m = 1 / (2/alpha - 1)
    for alpha in (0.1, 0.01, 0.001):
        assert bounds.one_sided_mixture_lower(1, 1, alpha, a=1, b=1) == pytest.approx(1 / (2 / alpha - 1), rel=1e-12)
    # one-sided, uniform prior, t of t: M(m) = sum_{i<=t} m^-i / (t + 1)
    m = np.array([0.3, 0.7, 0.95])
    for t in (1, 5, 20):
        closed = np.log(sum(m ** -i for i in range(t + 1)) / (t + 1))
        assert bounds.one_sided_mixture_log_evidence(t, t, m, 1.0, 1.0) == pytest.approx(closed, rel=1e-10)
    # two-sided Beta(a, b) prior, 1 of 1: M(m) = a / ((a + b) m)  ->  L = alpha a / (a + b)
    assert bounds.beta_mixture_lower(1, 1, 0.05, a=0.5, b=0.5) == pytest.approx(0.025, rel=1e-12)
    assert bounds.beta_mixture_lower(1, 1, 0.01, a=2.0, b=1.0) == pytest.approx(0.01 * 2 / 3, rel=1e-12)
    # one-sided vs general prior survival formula agree (a != 1 takes the betainc branch)
    k, t = np.array([3, 40, 900]), np.array([10, 50, 1000])
    assert np.allclose(bounds.one_sided_mixture_log_evidence(k, t, 0.6, 1.0, 0.1),
                       bounds.one_sided_mixture_log_evidence(k, t, 0.6, 1.0 + 1e-13, 0.1), atol=1e-8)


@pytest.mark.parametrize("name", list(bounds.CONFIDENCE_SEQUENCES))
def test_edge_cases(name):
    seq = bounds.CONFIDENCE_SEQUENCES[name]
    ts = np.array(seq.schedule(5000, 100))
    zero, full, looks = np.zeros((1, len(ts)), np.int64), ts[None].astype(np.int64), tuple(ts)
    assert seq.lower(zero, ts, 0.01, looks)[0] == 0.0
    assert seq.upper(full, ts, 0.01, looks)[0] == 1.0
    assert 0.0 < seq.upper(zero, ts, 0.01, looks)[0] < 0.01
    assert 0.99 < seq.lower(full, ts, 0.01, looks)[0] < 1.0


def test_staged_and_vectorised_clopper_pearson():
    for k, t in [(1, 2), (5, 10), (990, 1000), (51_234, 100_000), (0, 7), (7, 7)]:
        cp = bounds.clopper_pearson_lower(k, t, 0.001)
        assert bounds.clopper_pearson_lower_array(k, t, 0.001) == pytest.approx(cp, rel=1e-10, abs=1e-15)
        assert bounds.staged_clopper_pearson_lower(k, t, 0.001, stages=4) == pytest.approx(
            bounds.clopper_pearson_lower(k, t, 0.00025), rel=1e-10, abs=1e-15)
        upper = bounds.clopper_pearson_upper_array(k, t, 0.001)
        assert upper == (1.0 if k == t else pytest.approx(beta.ppf(0.999, k + 1, t - k), rel=1e-10))
    assert bounds.clopper_pearson_lower_array(7, 7, 0.01) == pytest.approx(0.01 ** (1 / 7))
    with pytest.raises(ValueError):
        bounds.one_sided_mixture_lower(11, 10, 0.01)
    with pytest.raises(ValueError):
        bounds.one_sided_mixture_lower(2.5, 10, 0.01)
    with pytest.raises(UserError):
        bounds.one_sided_mixture_lower(5, 10, 0.0)
    with pytest.raises(UserError):
        bounds.confidence_sequence("nope")


# ----------------------------------------------------------------------------- bounds: shape
def test_rejection_set_is_an_interval():
    # the bisection assumes {m <= k/t : M_t(m) >= c} = (0, L] for every c > 0: log M must not
    # increase anywhere it is positive, for the default prior and the uniform one
    for a, b in (bounds.MIXTURE_PRIOR, (1.0, 1.0)):
        for t in [1, 2, 3, 5, 10, 37, 100, 1000, 100_000]:
            for k in sorted({1, max(1, t // 2), max(1, (9 * t) // 10), max(1, t - 1), t}):
                hi = k / t if k < t else 1 - 1e-12
                m = np.concatenate([np.geomspace(1e-9, hi / 2, 200), hi - np.geomspace(hi / 2, hi * 1e-9, 600)])
                e = bounds.one_sided_mixture_log_evidence(k, t, m, a, b)
                assert not np.any((np.diff(e) > 1e-9) & (e[1:] > 0)), (a, b, k, t)


@pytest.mark.parametrize("name", ["mixture_cp", "mixture", "two_sided_mixture", "staged_cp"])
def test_monotone_and_never_tighter_than_fixed_n_clopper_pearson(name):
    seq, alpha = bounds.CONFIDENCE_SEQUENCES[name], 0.001
    for t in (10, 137, 1000, 20_000):
        k = np.arange(t + 1)
        looks = tuple(np.linspace(1, t, 12).astype(int))   # t is the last look (n_max)
        lower = seq.lower(k[:, None], np.array([t]), alpha, looks)
        upper = seq.upper(k[:, None], np.array([t]), alpha, looks)
        # monotone in k, ordered around k/t
        assert np.all(np.diff(lower) >= -1e-15) and np.all(np.diff(upper) >= -1e-15)
        assert np.all(lower <= k / t + 1e-15) and np.all(upper >= k / t - 1e-15)
        # a valid (1 - alpha) bound monotone in k is never tighter than one-sided CP at fixed t
        assert np.all(lower <= bounds.clopper_pearson_lower_array(k, t, alpha) + 1e-12)
        assert np.all(upper >= bounds.clopper_pearson_upper_array(k, t, alpha) - 1e-12)
        # one more failure never raises the lower bound
        more = seq.lower(k[:, None], np.array([t + 1]), alpha, looks)
        assert np.all(more <= lower + 1e-15)


def test_default_choice_is_recorded():
    assert bounds.DEFAULT_SEQUENCE == "mixture_cp" and SEQ.path_free
    doc = bounds.confidence_sequence.__doc__
    for word in ("staged CP", "betting", "two-sided", "Mean / median", "mixture_cp"):
        assert word in doc


def test_mixture_cp_is_the_mixture_plus_a_clopper_pearson_stage():
    k, t = np.array([0, 50, 990, 1000]), 1000
    mix = bounds.one_sided_mixture_lower(k, t, 0.001 * (1 - bounds.CP_SHARE))
    assert np.array_equal(bounds.mixture_cp_lower(k, t, 0.001, n_max=5000), mix)
    cp = bounds.clopper_pearson_lower_array(k, t, 0.001 * bounds.CP_SHARE)
    assert np.array_equal(bounds.mixture_cp_lower(k, t, 0.001, n_max=t), np.maximum(mix, cp))
    assert np.all(cp[1:3] > mix[1:3])   # at n_max CP is the tighter one unless votes are unanimous
    assert mix[3] > cp[3]


@pytest.mark.parametrize("p", [0.6, 0.97, 0.999])
def test_default_sequence_is_valid_at_every_t(p):
    # simultaneous coverage at EVERY sample count 1..T (not only at looks): with the interval
    # shape, L_t > p  <=>  M_t(p) >= 1/alpha, so evaluate the evidence at p along each path
    alpha, trials, horizon = 0.05, 2000, 600
    rng = np.random.default_rng(int(p * 1000))
    k = np.cumsum(rng.random((trials, horizon)) < p, axis=1)
    t = np.arange(1, horizon + 1)[None]
    a, b = bounds.MIXTURE_PRIOR
    lower_fails = (bounds.one_sided_mixture_log_evidence(k, t, p, a, b) >= math.log(1 / alpha)).any(1)
    upper_fails = (bounds.one_sided_mixture_log_evidence(t - k, t, 1 - p, b, a) >= math.log(1 / alpha)).any(1)
    assert lower_fails.sum() <= allowed(trials, alpha), lower_fails.sum()
    assert upper_fails.sum() <= allowed(trials, alpha), upper_fails.sum()
    # the default: the mixture at (1 - CP_SHARE) alpha at every t, or CP at CP_SHARE alpha at the end
    mix_share = math.log(1 / (alpha * (1 - bounds.CP_SHARE)))
    default_fails = (bounds.one_sided_mixture_log_evidence(k, t, p, a, b) >= mix_share).any(1) | (
        bounds.mixture_cp_lower(k[:, -1], horizon, alpha, n_max=horizon) > p)
    assert default_fails.sum() <= allowed(trials, alpha), default_fails.sum()
    if p < 0.99:  # (600 draws cannot lower-bound p = 0.999 at all: only the upper side is tested)
        # ... while re-checking fixed-t Clopper-Pearson at every t fails far more often
        naive = (bounds.clopper_pearson_lower_array(k, t, alpha) > p).any(1)
        assert naive.sum() > 2 * allowed(trials, alpha), naive.sum()


def test_sequential_done_rules():
    thr = bounds.radius_thresholds([0.25, 0.5], 0.25)
    lo, up, best = np.array([0.99, 0.9, 0.9, 0.3, 0.9]), np.array([1.0, 0.95, 0.99, 0.45, 0.99]), \
        np.array([0.999, 0.999, 0.95, 0.999, 0.999])
    done = bounds.sequential_done(lo, up, best, 0.25, thr)
    # certified both | refuted 0.5 | 0.5 out of reach | abstains | 0.5 undecided
    assert done.tolist() == [True, True, True, True, False]
    none = bounds.sequential_done(np.array([0.9, 0.9, 0.4]), np.array([0.9001, 1.0, 0.5]),
                                  np.array([0.999, 0.9001, 0.999]), 0.25, None, radius_tol=0.01)
    assert none.tolist() == [True, True, True]   # narrow | U=1 capped by best | U <= 1/2
    with pytest.raises(UserError):
        bounds.radius_thresholds([-0.1], 0.25)


# ----------------------------------------------------------------------------- soundness
SIGMA, ALPHA, N0, N_MAX = 0.25, 0.01, 32, 4000


def _threshold_trials(count: int):
    """Margins placed EXACTLY at the target radii r in {0.25, 0.5, 0.58}: p_A = Phi(r/sigma) in
    {0.841, 0.977, 0.990}; the true radius is r and the true class 1."""
    r = np.array([0.25, 0.5, 0.58])[np.arange(count) % 3]
    return at_margin(r), r


def _false_certifications(preds, radii, true_class, true_radius):
    preds, radii = np.asarray(preds), np.asarray(radii)
    certified = preds != ABSTAIN
    wrong = certified & ((preds != true_class) | (radii > true_radius + 1e-12))
    return int(wrong.sum()), int(certified.sum())


def _sequential(xs, r, seed, **kw):
    smooth = Smooth(Linear2(), 2, SIGMA)
    gens = [gen(seed + i) for i in range(len(xs))]
    return smooth.certify_sequential_batch(xs, N0, N_MAX, ALPHA, 100_000, gens, **kw)


@pytest.mark.parametrize("futility", ["projected", "unanimous"])
def test_sequential_is_sound_at_the_threshold(futility):
    xs, r = _threshold_trials(1500)
    certs = []
    for target in (0.25, 0.5, 0.58):  # each group gets its own radius as the only target
        idx = np.flatnonzero(np.isclose(r, target))
        certs += list(zip(idx, _sequential(xs[idx], r[idx], seed=10_000 * int(100 * target), radii=[target],
                                           futility=futility)))
    certs = [c for _, c in sorted(certs, key=lambda ic: ic[0])]
    fails, certified = _false_certifications([c.prediction for c in certs], [c.radius for c in certs], 1, r)
    assert fails <= allowed(len(r), ALPHA), (fails, len(r))
    # not vacuous: it stops early and most runs certify a radius close to (below) the target
    n_used = np.array([c.n_used for c in certs])
    assert certified >= 0.9 * len(r) and n_used.mean() < 0.9 * N_MAX
    assert all(sum(c.counts) == c.n_used for c in certs)


def test_sequential_is_sound_without_targets():
    # margins uniform on (-1, 3) sigma: the class is sign(margin), the true radius |margin|
    rng = np.random.default_rng(7)
    margin = rng.uniform(-1.0, 3.0, 800) * SIGMA
    xs = at_margin(margin)
    certs = _sequential(xs, margin, seed=5_000_000, radii=None, radius_tol=0.05)
    fails, certified = _false_certifications([c.prediction for c in certs], [c.radius for c in certs],
                                             (margin > 0).astype(int), np.abs(margin))
    assert fails <= allowed(len(margin), ALPHA), fails
    assert certified >= 0.6 * len(margin)
    close = sum(c.radius > abs(m) - 0.1 for c, m in zip(certs, margin) if c.prediction != ABSTAIN)
    assert close >= 0.5 * certified


def naive_certify_batch(smooth, xs, n0, n_max, alpha, batch_size, generators, radii):
    """THE INVALID RULE, for the test only: after every look, re-compute the fixed-n one-sided
    Clopper-Pearson bounds on the votes so far; stop as soon as the lower one certifies every
    target (or the upper one rules the largest target out)."""
    picks = [int(np.argmax(c)) for c in smooth.sample_counts(xs, n0, batch_size, generators)]
    thr = bounds.radius_thresholds(radii, smooth.sigma)
    looks = SEQ.schedule(n_max, smooth.noise_chunk)
    counts = np.zeros((len(xs), smooth.num_classes), np.int64)
    done = np.zeros(len(xs), bool)
    lower = np.zeros(len(xs))
    prev = 0
    for t in looks:
        idx = np.flatnonzero(~done)
        counts[idx] += smooth.sample_counts(xs[idx], t - prev, batch_size, [generators[i] for i in idx])
        prev = t
        k = counts[idx, np.array(picks)[idx]]
        lower[idx] = bounds.clopper_pearson_lower_array(k, t, alpha)
        done[idx] = (lower[idx] >= thr.max()) | (bounds.clopper_pearson_upper_array(k, t, alpha) < thr.max())
    return [(c if p > 0.5 else ABSTAIN, SIGMA * norm.ppf(p) if p > 0.5 else 0.0) for c, p in zip(picks, lower)]


def test_naive_recheck_of_clopper_pearson_is_not_sound():
    xs, r = _threshold_trials(1500)
    smooth = Smooth(Linear2(), 2, SIGMA)
    out = []
    for target in (0.25, 0.5, 0.58):
        idx = np.flatnonzero(np.isclose(r, target))
        gens = [gen(77 + 10_000 * int(100 * target) + i) for i in range(len(idx))]
        out += list(zip(idx, naive_certify_batch(smooth, xs[idx], N0, N_MAX, ALPHA, 100_000, gens, [target])))
    out = [c for _, c in sorted(out, key=lambda ic: ic[0])]
    fails, _ = _false_certifications([c for c, _ in out], [rad for _, rad in out], 1, r)
    # the check that the sequential procedure passes fails here: ~3.5x alpha
    assert fails > allowed(len(r), ALPHA) and fails > 2 * ALPHA * len(r), (fails, allowed(len(r), ALPHA))


def test_soundness_check_catches_a_broken_sequence(monkeypatch):
    # the same check run through Smooth, with the library's sequence replaced by fixed-n CP
    naive = bounds.ConfidenceSequence(
        "naive", lambda ks, ts, a, j: bounds.clopper_pearson_lower_array(np.atleast_2d(ks)[:, -1], int(ts[-1]), a),
        lambda ks, ts, a, j: bounds.clopper_pearson_upper_array(np.atleast_2d(ks)[:, -1], int(ts[-1]), a),
        SEQ.schedule, path_free=True, anytime=False)
    monkeypatch.setitem(bounds.CONFIDENCE_SEQUENCES, bounds.DEFAULT_SEQUENCE, naive)
    xs, r = _threshold_trials(900)
    idx = np.flatnonzero(np.isclose(r, 0.25))
    certs = _sequential(xs[idx], r[idx], seed=3, radii=[0.25])
    fails, _ = _false_certifications([c.prediction for c in certs], [c.radius for c in certs], 1, r[idx])
    assert fails > allowed(len(idx), ALPHA), fails


# ----------------------------------------------------------------------------- exact answers
def _first_look(looks, alpha, thresholds, n_max):
    """First look at which unanimous votes decide every threshold (certified or out of reach)."""
    best = SEQ.lower(np.array([[n_max]]), np.array([n_max]), alpha, looks)[0]
    for t in looks:
        lower = SEQ.lower(np.array([[t]]), np.array([t]), alpha, looks)[0]
        if all(lower >= th or best < th for th in thresholds):
            return t, lower
    return looks[-1], lower


@pytest.mark.parametrize("sigma,alpha,radii", [(0.25, 0.001, [0.25, 0.5, 0.75, 1.0]), (0.5, 0.01, [0.5, 1.0])])
def test_constant_classifier_stops_at_first_deciding_look(sigma, alpha, radii):
    n_max = 20_000
    smooth = Smooth(Constant(3), 10, sigma)
    cert = smooth.certify_sequential(torch.rand(1, 4, 4), 50, n_max, alpha, 1000, radii, gen(0))
    looks = SEQ.schedule(n_max, smooth.noise_chunk)
    t, lower = _first_look(looks, alpha, bounds.radius_thresholds(radii, sigma), n_max)
    assert isinstance(cert, Certificate)
    assert cert.n_used == t < n_max / 2
    assert cert.prediction == 3 and cert.counts == tuple(t if c == 3 else 0 for c in range(10))
    assert cert.p_lower == pytest.approx(lower, abs=1e-15)
    assert cert.radius == pytest.approx(sigma * norm.ppf(lower), abs=1e-12)
    # without targets it runs until the radius is pinned to radius_tol
    cert = smooth.certify_sequential(torch.rand(1, 4, 4), 50, n_max, alpha, 1000, None, gen(0), radius_tol=0.05)
    best = SEQ.lower(np.array([[n_max]]), np.array([n_max]), alpha, looks)[0]
    lower_at = {t: SEQ.lower(np.array([[t]]), np.array([t]), alpha, looks)[0] for t in looks}
    expect = next(t for t in looks if sigma * (norm.ppf(best) - norm.ppf(lower_at[t])) < 0.05)
    assert cert.n_used == expect and cert.prediction == 3


def test_low_p_abstains_early():
    smooth = Smooth(Bins3(0.25), 3, 0.25)
    xs = at_margin([0.0] * 4).float()
    certs = smooth.certify_sequential_batch(xs, 100, 100_000, 0.001, 10_000, [gen(i) for i in range(4)],
                                            [0.25, 0.5])
    certs += smooth.certify_sequential_batch(xs, 100, 100_000, 0.001, 10_000, [gen(i) for i in range(4)])
    for cert in certs:
        assert cert.prediction == ABSTAIN and cert.radius == 0.0
        assert cert.n_used <= 2000, cert.n_used
        assert cert.p_lower < 0.5
    # PREDICT only needs class 0 (0.4) to beat the runner-up (0.3): decided, early
    assert smooth.predict_sequential(xs[0], 100_000, 0.001, 10_000, gen(0)) == 0


def test_runs_to_n_max_with_the_votes_of_certify():
    smooth = Smooth(Linear2(), 2, 0.5)
    x = at_margin([0.2])[0]   # p_A = Phi(0.4) = 0.66
    fixed = smooth.certify(x, 100, 2350, 0.001, 1000, gen(4))
    seq = smooth.certify_sequential(x, 100, 2350, 0.001, 1000, None, gen(4), radius_tol=1e-9)
    assert seq.n_used == fixed.n_used == 2350 and seq.counts == fixed.counts
    assert seq.p_lower <= fixed.p_lower + 1e-12   # never tighter than fixed-n CP at n_max


def test_projected_futility_stops_hopeless_runs_earlier():
    # p_A just above Phi(2) (radius 0.5 at sigma 0.25): never certifiable at n_max = 20,000, but
    # U_t stays above the threshold, so only the projection can stop these runs before n_max
    margin = SIGMA * norm.ppf(0.9775)
    xs = at_margin([margin] * 40)
    smooth = Smooth(Linear2(), 2, SIGMA)
    runs = {rule: smooth.certify_sequential_batch(xs, 32, 20_000, 0.001, 100_000, [gen(i) for i in range(40)],
                                                  [0.25, 0.5], futility=rule) for rule in ("projected", "unanimous")}
    used = {rule: np.array([c.n_used for c in certs]) for rule, certs in runs.items()}
    assert np.all(used["projected"] <= used["unanimous"])
    assert used["projected"].mean() < 0.9 * used["unanimous"].mean()
    for a, b in zip(*runs.values()):   # same decisions at the targets: certified at 0.25 only
        assert a.prediction == b.prediction == 1 and 0.25 <= a.radius < 0.5 and 0.25 <= b.radius < 0.5


def test_certificate_n_used_is_backward_compatible():
    assert Certificate(1, 0.5, 0.9, (3, 7)).n_used == 10
    assert Certificate(1, 0.5, 0.9, (3, 7), 40).n_used == 40
    assert Certificate(1, 0.5, 0.9, (3, 7)) == Certificate(1, 0.5, 0.9, (3, 7), 10)


# ----------------------------------------------------------------------------- packing
def test_batch_equals_one_by_one():
    model = LinearK(64, 10, seed=1).eval()
    xs = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    smooth = Smooth(model, 10, 0.5)
    seeds = [21, 22, 23, 24, 25, 26]
    radii = [0.1, 0.25, 0.5]
    for kw in ({"radii": radii}, {"radii": None, "radius_tol": 0.05}):
        one = [smooth.certify_sequential(xs[i], 100, 20_000, 0.001, 1000, generator=gen(s), **kw)
               for i, s in enumerate(seeds)]
        assert len({c.n_used for c in one}) > 1          # images stop at different looks
        for batch_size in (1000, 130, 4000):
            packed = smooth.certify_sequential_batch(xs, 100, 20_000, 0.001, batch_size,
                                                     [gen(s) for s in seeds], **kw)
            assert packed == one
        order = [4, 0, 2]
        sub = smooth.certify_sequential_batch(xs[order], 100, 20_000, 0.001, 700, [gen(seeds[i]) for i in order], **kw)
        assert sub == [one[i] for i in order]
    p_one = [smooth.predict_sequential(xs[i], 5000, 0.01, 300, gen(s)) for i, s in enumerate(seeds)]
    assert p_one == smooth.predict_sequential_batch(xs, 5000, 0.01, 2000, [gen(s) for s in seeds])


@pytest.mark.parametrize("name", list(bounds.CONFIDENCE_SEQUENCES))
def test_every_registered_sequence_runs(name):
    smooth = Smooth(Constant(2), 10, 0.25)
    certs = smooth.certify_sequential_batch(torch.rand(2, 1, 4, 4), 50, 20_000, 0.001, 5000,
                                            [gen(0), gen(1)], [0.25, 0.5], sequence=name)
    for cert in certs:
        assert cert.prediction == 2 and 0.5 <= cert.radius < 0.95 and cert.n_used < 20_000


# ----------------------------------------------------------------------------- predict
def test_predict_sequential_decides_early_and_abstains_on_ties():
    smooth = Smooth(Constant(7), 10, 0.25)
    assert smooth.predict_sequential(torch.rand(1, 4, 4), 100_000, 0.001, 1000, gen(0)) == 7
    # a tie (p = 1/2 for both classes): never decided; abstains
    x = at_margin([0.0])[0]
    assert Smooth(Linear2(), 2, 0.25).predict_sequential(x, 3000, 0.01, 5000, gen(1)) == ABSTAIN


def test_predict_sequential_wrong_class_rate():
    # margin -0.05 sigma: g(x) = 0 with p_0 = 0.52; returning 1 is the error
    trials, alpha = 1000, 0.05
    xs = at_margin([-0.05 * SIGMA] * trials)
    preds = np.array(Smooth(Linear2(), 2, SIGMA).predict_sequential_batch(
        xs, 4000, alpha, 100_000, [gen(900_000 + i) for i in range(trials)]))
    assert (preds == 1).sum() <= allowed(trials, alpha), (preds == 1).sum()
    # clear cases are decided: margin 1 sigma
    xs = at_margin([SIGMA] * trials)
    preds = Smooth(Linear2(), 2, SIGMA).predict_sequential_batch(xs[:50], 4000, alpha, 100_000,
                                                                 [gen(i) for i in range(50)])
    assert preds == [1] * 50


def test_bad_arguments():
    smooth = Smooth(Constant(0), 10, 0.25)
    x = torch.rand(1, 4, 4)
    with pytest.raises(UserError):
        smooth.certify_sequential(x, 10, 1000, 0.01, 100, [-0.5])
    with pytest.raises(UserError):
        smooth.certify_sequential(x, 10, 1000, 0.01, 100, sequence="nope")
    with pytest.raises(UserError):
        smooth.certify_sequential(x, 10, 0, 0.01, 100)
    with pytest.raises(UserError):
        smooth.certify_sequential(x, 10, 1000, 0.01, 100, radius_tol=0.0)
    with pytest.raises(UserError):
        smooth.certify_sequential(x, 10, 1000, 0.01, 100, futility="nope")
    with pytest.raises(UserError):
        smooth.predict_sequential(x, 1000, 1.5, 100)


def test_warns_when_n_max_can_never_certify(caplog):
    smooth = Smooth(Constant(1), 10, 0.25)
    with caplog.at_level("WARNING"):
        cert = smooth.certify_sequential(torch.rand(1, 4, 4), 10, 10, 0.001, 100, [0.1])
        smooth.certify_sequential(torch.rand(1, 4, 4), 10, 10, 0.001, 100, [0.1])
    assert cert.prediction == ABSTAIN and cert.n_used == 10
    assert caplog.text.count("never certify") == 1


# --- exact checks found missing by a mutation audit (2026-11-24) -------------------------------
@pytest.mark.parametrize("n_max,expect", [(500, ABSTAIN), (600, 1), (1000, 1)])
def test_predict_sequential_threshold_and_last_look(n_max, expect):
    """60 % votes for class 1 of 10: the mixture evidence crosses log(1/alpha) before 500 votes
    but log((C-1)/alpha) (the union bound over the C-1 rivals) only between 500 and 600. So
    n_max = 500 must abstain, and n_max = 600 must decide at its last look (a futility rule
    that looks one step ahead would abstain there)."""
    a, b = bounds.MIXTURE_PRIOR
    evidence = lambda t: bounds.one_sided_mixture_log_evidence(0.6 * t, t, 0.5, a, b)  # noqa: E731
    assert np.log(100) <= evidence(500) < np.log(900) <= evidence(600)
    smooth = Smooth(Votes([1, 1, 1, 0, 0], 10), 10, 0.25)
    assert smooth.predict_sequential(torch.rand(1, 2, 2), n_max, 0.01, 1000, gen(0)) == expect


def test_mixture_cp_upper_is_the_mirrored_mixture_plus_cp():
    """The upper sequence mirrors the lower one: the prior is flipped, not reused."""
    k, t = np.array([0, 10, 500, 990, 1000]), 1000
    mix = bounds.one_sided_mixture_upper(k, t, 0.001 * (1 - bounds.CP_SHARE))
    assert np.array_equal(bounds.mixture_cp_upper(k, t, 0.001, n_max=5000), mix)
    cp = bounds.clopper_pearson_upper_array(k, t, 0.001 * bounds.CP_SHARE)
    assert np.array_equal(bounds.mixture_cp_upper(k, t, 0.001, n_max=t), np.minimum(mix, cp))


def test_look_schedule_never_repeats_a_look():
    assert bounds.look_schedule(200, 100) == (100, 200)
    for ratio in (1.2, 1.5, 2.0):
        for n in range(100, 20_001, 100):
            looks = bounds.look_schedule(n, 100, ratio)
            assert looks[-1] == n and all(b > a for a, b in zip(looks, looks[1:]))


def test_sequential_p_lower_is_the_running_max_over_looks():
    """Run to n_max (radius_tol ~ 0): the reported p_lower is the maximum of the bound over
    every look, recomputed here from the same draws (an anytime-valid sequence may keep its
    best bound). At least one trial's maximum is not at the last look."""
    smooth, n_max, alpha = Smooth(Linear2(), 2, 0.25), 3000, 0.001
    x = at_margin([0.25 * norm.ppf(0.8)])[0]
    seq = bounds.confidence_sequence("mixture")
    looks, earlier_max = seq.schedule(n_max, 100), False
    for seed in range(15):
        g = gen(seed)
        c_a = int(np.argmax(smooth.sample_counts(x[None], 10, 1000, [g])[0]))
        k, prev, lows = 0, 0, []
        for t in looks:
            k, prev = k + int(smooth.sample_counts(x[None], t - prev, 1000, [g])[0][c_a]), t
            lows.append(float(seq.lower(np.array([[k]]), np.array([t]), alpha, looks)[0]))
        cert = smooth.certify_sequential(x, 10, n_max, alpha, 1000, None, gen(seed), radius_tol=1e-9,
                                         sequence="mixture")
        assert cert.n_used == n_max and cert.p_lower == max(lows)
        earlier_max |= max(lows) > lows[-1]
    assert earlier_max


def test_projected_futility_keeps_a_reachable_radius():
    """Exactly 99 % votes: a radius just below what n_max samples certify must be reached,
    not given up early by a pessimistic projection."""
    sigma, alpha, n_max = 0.25, 0.001, 20_000
    seq = bounds.confidence_sequence()
    looks = seq.schedule(n_max, 100)
    best = seq.lower(np.array([[round(0.99 * n_max)]]), np.array([n_max]), alpha, looks)[0]
    r = sigma * norm.ppf(best) - 1e-9
    smooth = Smooth(Votes([1] * 99 + [0], 2), 2, sigma)
    cert = smooth.certify_sequential(torch.rand(1, 2, 2), 100, n_max, alpha, 1000, [r], gen(0))
    assert cert.prediction == 1 and cert.radius >= r and cert.n_used == n_max


def _stopping_reference(ks: np.ndarray, looks, alpha: float, sigma: float, radii, running_min: bool):
    """(samples drawn, p_lower) of sequential CERTIFY with projected futility, recomputed look by
    look from the bounds for the c_A counts ``ks`` at ``looks``; ``running_min=False`` uses each
    look's own upper bound instead of the smallest so far."""
    thr, lower, upper = bounds.radius_thresholds(radii, sigma), 0.0, 1.0
    for j, t in enumerate(looks):
        path, ts = ks[None, :j + 1], np.asarray(looks[:j + 1])
        lower = max(lower, float(SEQ.lower(path, ts, alpha, looks)[0]))
        now = float(SEQ.upper(path, ts, alpha, looks)[0])
        upper = min(upper, now) if running_min else now
        best = SEQ.best_lower(path, looks, alpha, np.array([upper]))
        if t == looks[-1] or bounds.sequential_done(np.array([lower]), np.array([upper]), best,
                                                    sigma, thr)[0]:
            return t, lower


def test_sequential_upper_bound_is_the_running_min_over_looks():
    """A scripted vote path: 100 selection votes for c_A = 1, then 60 % for c_A over 200
    samples, then unanimous. The upper bound at 200 samples refutes r = 0.25; at 400 the lower
    bound certifies r = 0.1, so every target is decided and sampling stops, although that look's
    own upper bound (the path has turned) no longer refutes 0.25. Using each look's own upper
    bound would sample on to 800 and certify 0.25 there: a different, also valid, certificate."""
    sigma, alpha, n0, n_max, radii = 0.25, 0.001, 100, 20_000, [0.1, 0.25]
    i = np.arange(n_max)
    path = np.where(i < 200, np.floor((i + 1) * 0.6) > np.floor(i * 0.6), True).astype(np.int64)
    looks = SEQ.schedule(n_max, 100)
    ks = np.cumsum(path)[np.asarray(looks) - 1]
    t, lower = _stopping_reference(ks, looks, alpha, sigma, radii, running_min=True)
    assert (t, lower) != _stopping_reference(ks, looks, alpha, sigma, radii, running_min=False)
    assert t < 800 and lower < norm.cdf(0.25 / sigma)   # the case this test is about
    model = Scripted([1] * n0 + path.tolist())
    cert = Smooth(model, 2, sigma).certify_sequential(torch.rand(1, 2, 2), n0, n_max, alpha, 1000,
                                                      radii, gen(0))
    assert (cert.prediction, cert.n_used, cert.p_lower) == (1, t, lower)
    assert model.seen == n0 + t


def _tie_stop(n_max: int, alpha: float, futility: str) -> int:
    """The look at which an exact tie (t/2 votes each, t even) gives up, recomputed: the
    leader's further votes are all ``n_max - t`` of them (unanimous) or, projected, its
    Clopper-Pearson upper share of them plus 3 standard deviations."""
    a, b = bounds.MIXTURE_PRIOR
    for t in bounds.look_schedule(n_max, 100):
        rest = n_max - t
        if futility == "unanimous":
            ahead = rest
        else:
            u = float(bounds.clopper_pearson_upper_array(t // 2, t, alpha))
            ahead = min(math.ceil(rest * u + 3 * math.sqrt(rest * u * (1 - u)) - 1e-9), rest)
        if bounds.one_sided_mixture_log_evidence(t // 2 + ahead, n_max, 0.5, a, b) < np.log(1 / alpha):
            return t
    return n_max


@pytest.mark.parametrize("futility", ["unanimous", "projected"])
def test_predict_sequential_gives_up_on_a_tie_at_the_recomputed_look(futility):
    """An exact tie (votes alternate 0, 1): PREDICT abstains, and stops sampling at the first
    look where the further votes (all for the leader, or its projected share) could not reach
    (C - 1)/alpha. Unanimous saves only the last look (4,800 of 5,000); projected stops near
    half of n_max (2,200)."""
    n_max, alpha = 5000, 0.001
    stop = _tie_stop(n_max, alpha, futility)
    assert stop == (4800 if futility == "unanimous" else 2200)
    model = Scripted([0, 1] * (n_max // 2))
    result = Smooth(model, 2, 0.25).predict_sequential_details(torch.rand(1, 1, 2, 2), n_max, alpha, 1000,
                                                               [gen(0)], futility=futility)
    assert result[0].prediction == ABSTAIN and result[0].n_used == model.seen == stop


def test_projected_futility_keeps_a_clear_leader():
    """A 3:2 split is decided at the same look under both rules (the projection does not give
    up on what the votes will decide)."""
    n_max, alpha = 20_000, 0.001
    used = {}
    for rule in ("unanimous", "projected"):
        model = Scripted([0, 1, 0, 1, 0] * (n_max // 5))
        used[rule] = Smooth(model, 2, 0.25).predict_sequential_details(
            torch.rand(1, 1, 2, 2), n_max, alpha, 1000, [gen(0)], futility=rule)[0]
    assert used["unanimous"] == used["projected"] and used["projected"].prediction == 0
    assert used["projected"].n_used < n_max
