"""Certified accuracy at a fixed radius as the per-epoch metric (``--eval-radius``): its
statistics (:func:`bounds.certified_at`, :func:`bounds.min_samples_to_certify_radius`), its
validity on a classifier whose smoothed probabilities are known in closed form
(:meth:`Smooth.certified_correct`), and its use for ``best.pt`` selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from classifiers import Constant, gen, linear_points
from robustmaxup.certify import Smooth, bounds
from robustmaxup.train import TrainConfig, loop, setup, train
from test_smooth import Linear2


# ----------------------------------------------------------------------------- exact answers
@pytest.mark.parametrize("n,alpha,sigma", [(100, 0.001, 0.25), (500, 0.01, 0.5), (40, 0.05, 0.12)])
def test_certified_at_is_the_clopper_pearson_radius_test(n, alpha, sigma):
    for k in range(0, n + 1, max(1, n // 25)):
        p = bounds.clopper_pearson_lower(k, n, alpha)  # statsmodels, one count at a time
        radius = sigma * norm.ppf(p) if p > 0.5 else -1.0
        for r in (0.0, 0.1, 0.25, 0.5):
            if abs(radius - r) < 1e-9:
                continue  # the float edge is not what this checks
            assert bounds.certified_at(k, n, alpha, r, sigma) == (radius >= r), (k, r)
    ks = np.arange(n + 1)
    vec = bounds.certified_at(ks, n, alpha, 0.1, sigma)
    assert vec.tolist() == [bounds.certified_at(int(k), n, alpha, 0.1, sigma) for k in ks]


def test_certified_at_known_values():
    assert bounds.certified_at(10, 10, 0.001, 0.0, 0.25)         # 0.001 ** 0.1 = 0.50119 > 1/2
    assert not bounds.certified_at(10, 10, 0.001, 0.01, 0.25)    # radius 0.25 * Phi^-1(0.50119) = 0.0007
    assert not bounds.certified_at(9, 9, 0.001, 0.0, 0.25)       # 0.001 ** (1/9) = 0.464
    assert not bounds.certified_at(50, 100, 0.4, 0.0, 0.25)      # p_lower < 1/2 however loose alpha is


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
@pytest.mark.parametrize("radius,sigma", [(0.0, 0.25), (0.1, 0.25), (0.25, 0.25), (0.5, 0.25), (1.0, 0.5), (0.3, 0.12)])
def test_min_samples_to_certify_radius_is_the_least_that_can(radius, sigma, alpha):
    n = bounds.min_samples_to_certify_radius(radius, sigma, alpha)
    assert bounds.certified_at(n, n, alpha, radius, sigma)
    assert not bounds.certified_at(n - 1, n - 1, alpha, radius, sigma)
    if radius == 0.0:
        assert n == bounds.min_samples_to_certify(alpha)
    assert n >= math.log(alpha) / math.log(norm.cdf(radius / sigma)) - 1


def test_min_samples_to_certify_radius_refuses_an_unreachable_radius():
    assert bounds.min_samples_to_certify_radius(0.25, 0.25, 0.001) == 40
    with pytest.raises(Exception, match="beyond what any number of samples"):
        bounds.min_samples_to_certify_radius(9.0, 0.25, 0.001)


def test_certified_correct_on_a_constant_classifier():
    smooth = Smooth(Constant(3, 10), 10, 0.25)
    xs = torch.rand(4, 1, 2, 2)
    labels = torch.tensor([3, 3, 1, 3])
    gens = [gen(0)] * 4
    assert smooth.certified_correct(xs, labels, 0.25, 40, 0.001, 100, gens).tolist() == [True, True, False, True]
    assert not smooth.certified_correct(xs, labels, 0.25, 39, 0.001, 100, gens).any()
    assert not smooth.certified_correct(xs, labels, 0.26, 40, 0.001, 100, gens).any()


# ----------------------------------------------------------------------------- validity
SIGMA, ALPHA, N, D, R = 0.25, 0.01, 500, 256, 0.25


def _points(count: int, lo: float, hi: float, seed: int):
    """A random Linear2 and ``count`` inputs (pixels) whose normalised margin t = (w.x+b)/|w| is
    uniform on (lo, hi): the smoothed classifier returns class 1 on the ball of radius r iff t >= r."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(lo, hi, size=count)
    w, b, x = linear_points(rng, D, t)
    return Linear2(torch.tensor(w), b), x, t


def _claims(lo: float, hi: float, models: int = 10, per: int = 100, seed: int = 0) -> tuple[int, int]:
    """(claims of 'certified correct at R' for label 1, trials) over points with t in (lo, hi)."""
    claims = 0
    for j in range(models):
        model, xs, _ = _points(per, lo, hi, seed * 1000 + j)
        gens = [gen(seed * 100_000 + j * 1000 + i) for i in range(per)]
        ok = Smooth(model, 2, SIGMA).certified_correct(xs, torch.ones(per, dtype=torch.long), R, N, ALPHA,
                                                       20_000, gens)
        claims += int(ok.sum())
    return claims, models * per


def _allowed(total: int) -> float:
    return ALPHA * total + 3 * math.sqrt(total * ALPHA * (1 - ALPHA))


def test_certified_correct_never_claims_more_than_it_can_prove():
    # every point lies inside the radius (t < R, most just below it): each claim is a failure
    fails, total = _claims(R - 0.15 * SIGMA, R)
    assert fails <= _allowed(total), (fails, total)
    # and the wrong side of the boundary (the label is not even the smoothed class) never counts
    wrong, _ = _claims(-R, 0.0, models=3)
    assert wrong == 0


def test_certified_correct_has_power_away_from_the_boundary():
    claims, total = _claims(R + 0.5 * SIGMA, R + 2 * SIGMA, models=3)
    assert claims >= 0.95 * total, (claims, total)


def test_the_validity_check_catches_a_point_estimate(monkeypatch):
    monkeypatch.setattr(bounds, "clopper_pearson_lower_array", lambda k, n, alpha: np.asarray(k) / n)
    fails, total = _claims(R - 0.15 * SIGMA, R, models=3)
    assert fails > _allowed(total), (fails, total)


# ----------------------------------------------------------------------------- training
def _cfg(out, **kw) -> TrainConfig:
    base = dict(dataset="digits", arch="digits_cnn", method="gaussian", method_args={"sigma": 0.25},
                epochs=3, batch=64, lr=0.05, out=str(out), quiet=True, max_eval=200,
                eval_radius=0.25, eval_n=100)
    base.update(kw)
    return TrainConfig(**base)


def test_best_checkpoint_is_chosen_by_certified_accuracy(tmp_path):
    summary = train(_cfg(tmp_path / "run"))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["best"]["metric"] == "validation certified accuracy at r=0.25 (sigma=0.25, n=100, alpha=0.001)"
    assert "certified accuracy at r=0.25" in best["selection"]
    vals = [m["val"] for m in summary["history"]]
    assert best["best"]["value"] == max(vals) and best["best"]["epoch"] == 1 + vals.index(max(vals))
    assert best["config"]["eval_radius"] == 0.25 and best["config"]["eval_n"] == 100
    assert all(m["metric"] == best["best"]["metric"].removeprefix("validation ") for m in summary["history"])
    assert all(m["eval_seconds"] > 0 for m in summary["history"])


@pytest.mark.parametrize("flag", [{"eval_n": 200}, {"eval_alpha": 0.01}])
def test_eval_settings_without_eval_radius_are_refused(tmp_path, flag):
    with pytest.raises(Exception, match="applies only with eval_radius"):
        setup(_cfg(tmp_path / "run", eval_radius=None, **flag))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("ratio", [6.0, 7.0, 8.0, 8.2])
def test_far_radii_are_refused_at_once_not_searched_for(tmp_path, ratio):
    """r/sigma in [6.5, 8.3) once made the least-n search count down from ~1e16 one by one."""
    n = bounds.min_samples_to_certify_radius(ratio * 0.25, 0.25, 0.001)
    assert bounds.certified_at(n, n, 0.001, ratio * 0.25, 0.25)
    assert not bounds.certified_at(n - 1, n - 1, 0.001, ratio * 0.25, 0.25)
    with pytest.raises(Exception, match="noisy copies per image"):
        setup(_cfg(tmp_path / "run", eval_radius=ratio * 0.25, eval_n=100_000))


def test_certified_accuracy_falls_with_the_radius_on_the_same_noise(tmp_path):
    run = setup(_cfg(tmp_path / "run", epochs=4))
    try:
        for epoch in range(4):
            loop.train_epoch(run, epoch)
        by_radius = {}
        for r in (0.0, 0.1, 0.25, 0.4):
            run.cfg.eval_radius = r
            by_radius[r] = loop.evaluate(run, "test")
        run.cfg.eval_radius = None
        plain = loop.evaluate(run, "test")
    finally:
        run.lock.release()
    values = list(by_radius.values())
    assert values == sorted(values, reverse=True), by_radius  # the same votes, a stricter test each time
    assert values[0] > values[-1] + 0.1, by_radius             # the radius is really applied
    assert 0.5 < plain and values[0] <= plain + 0.1, (plain, by_radius)
