"""The statistics of randomized smoothing (Cohen et al., 2019), as small pure functions.

Which test is which:

* CERTIFY uses a **one-sided** ``(1 - alpha)`` Clopper-Pearson *lower* confidence bound on the
  probability ``p_A`` of the selected class: :func:`clopper_pearson_lower`.
* PREDICT uses a **two-sided** exact binomial test of ``n_A`` successes in ``n_A + n_B`` trials
  against ``p = 1/2``: :func:`binomial_test_pvalue` (``scipy.stats.binomtest``; the removed
  ``scipy.stats.binom_test`` is never used).

Example::

    >>> p = clopper_pearson_lower(990, 1000, alpha=0.001)
    >>> round(certified_radius(p, sigma=0.25), 4)
    0.4945
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import betainc, betaln, expit, xlog1py, xlogy
from scipy.stats import beta as beta_dist
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from robustmaxup.errors import UserError
from robustmaxup.runtime.checks import check_alpha  # re-exported: the one failure-probability check

log = logging.getLogger(__name__)

__all__ = [
    "clopper_pearson_lower", "certified_radius", "binomial_test_pvalue", "min_samples_to_certify",
    "min_samples_to_predict", "predict_sequential_log_threshold", "min_samples_to_predict_sequential",
    "can_ever_certify", "check_alpha", "certified_at", "min_samples_to_certify_radius",
    # anytime-valid confidence sequences (sequential CERTIFY / PREDICT)
    "one_sided_mixture_log_evidence", "one_sided_mixture_lower", "one_sided_mixture_upper",
    "beta_mixture_log_evidence", "beta_mixture_lower", "beta_mixture_upper",
    "clopper_pearson_lower_array", "clopper_pearson_upper_array",
    "staged_clopper_pearson_lower", "staged_clopper_pearson_upper", "betting_lower", "betting_upper",
    "mixture_cp_lower", "mixture_cp_upper",
    "look_schedule", "staged_schedule", "ConfidenceSequence", "CONFIDENCE_SEQUENCES", "DEFAULT_SEQUENCE",
    "MIXTURE_PRIOR", "CP_SHARE", "PROJECTION_Z", "projected_successes", "confidence_sequence", "radius_thresholds", "sequential_done",
]


def _check_counts(k: int, n: int) -> None:
    if int(k) != k or int(n) != n:
        raise ValueError(f"counts must be integers, got k={k}, n={n}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower confidence bound on a binomial proportion.

    With probability at least ``1 - alpha`` over ``k ~ Binomial(n, p)`` the returned bound is
    ``<= p``. It is the lower end of the *two-sided* interval at level ``1 - 2 alpha``, i.e. the
    ``alpha`` quantile of ``Beta(k, n - k + 1)``; ``k = 0`` gives 0 and ``k = n`` gives
    ``alpha ** (1 / n)``.

    Args:
        k: number of successes (integer, ``0 <= k <= n``).
        n: number of trials (integer, ``n >= 1``).
        alpha: one-sided error probability in (0, 1).

    Example::

        >>> round(clopper_pearson_lower(10, 10, 0.001), 6)   # 0.001 ** (1/10)
        0.501187
    """
    _check_counts(k, n)
    check_alpha(alpha)
    if k == 0:
        return 0.0
    lower = proportion_confint(int(k), int(n), alpha=2 * alpha, method="beta")[0]
    return float(lower)


def certified_radius(p_lower: float, sigma: float) -> float:
    """The L2 radius ``sigma * Phi^{-1}(p_lower)`` certified when ``p_A >= p_lower > 1/2``.

    Gives 0 at ``p_lower = 1/2`` and a negative number below it (callers abstain there).

    Example::

        >>> certified_radius(0.5, 0.25)
        0.0
    """
    if sigma <= 0:
        raise UserError(f"sigma must be > 0, got {sigma}")
    return float(sigma * norm.ppf(p_lower))


def binomial_test_pvalue(n_a: int, n_b: int) -> float:
    """**Two-sided** exact binomial-test p-value of ``n_a`` successes in ``n_a + n_b`` trials
    against ``p = 1/2`` (``scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue``).

    For ``p = 1/2`` this equals ``min(1, 2 * P[X >= max(n_a, n_b)])``. ``n_a + n_b = 0`` gives 1.

    Example::

        >>> binomial_test_pvalue(10, 0)    # 2 * 0.5**10
        0.001953125
    """
    n_a, n_b = int(n_a), int(n_b)
    if n_a < 0 or n_b < 0:
        raise ValueError(f"counts must be >= 0, got {n_a}, {n_b}")
    if n_a + n_b == 0:
        return 1.0
    return float(binomtest(n_a, n_a + n_b, 0.5).pvalue)


def min_samples_to_certify(alpha: float) -> int:
    """The smallest ``n`` for which CERTIFY can ever succeed at level ``alpha``.

    Even if all ``n`` votes agree, the one-sided Clopper-Pearson bound is ``alpha ** (1/n)``,
    which must exceed 1/2: ``n > log2(1/alpha)``. Example: ``alpha = 0.001`` needs ``n >= 10``
    (and at ``n = 10`` even unanimous votes certify only radius ``sigma * 0.003``).

    Example::

        >>> min_samples_to_certify(0.001)
        10
    """
    check_alpha(alpha)
    n = max(1, math.floor(math.log2(1.0 / alpha)))
    while alpha ** (1.0 / n) <= 0.5:  # guard the float edge where log2 is an integer
        n += 1
    while n > 1 and alpha ** (1.0 / (n - 1)) > 0.5:
        n -= 1
    return n


def min_samples_to_predict(alpha: float) -> int:
    """The smallest ``n`` for which PREDICT can ever return a class at level ``alpha``.

    Unanimous votes give the two-sided p-value ``2 * 0.5 ** n``, which must be ``<= alpha``.

    Example::

        >>> min_samples_to_predict(0.001)
        11
    """
    check_alpha(alpha)
    n = 1
    while binomial_test_pvalue(n, 0) > alpha:
        n += 1
    return n


def predict_sequential_log_threshold(alpha: float, num_classes: int) -> float:
    """Sequential PREDICT returns the leader once its mixture evidence against its rival reaches
    ``(C - 1) / alpha`` (Ville's inequality, union bound over the ``C - 1`` rivals): the log."""
    check_alpha(alpha)
    return float(np.log((num_classes - 1) / alpha))


def min_samples_to_predict_sequential(alpha: float, num_classes: int) -> int:
    """The smallest ``n_max`` for which sequential PREDICT can ever return a class: ``n_max``
    unanimous votes must reach :func:`predict_sequential_log_threshold`.

    Example::

        >>> min_samples_to_predict_sequential(0.001, 10)
        14
    """
    need = predict_sequential_log_threshold(alpha, num_classes)
    return _least(lambda n: one_sided_mixture_log_evidence(n, n, 0.5, *MIXTURE_PRIOR) >= need)


def _least(reaches: Callable[[int], bool], start: int = 1) -> int:
    """The least ``n >= start`` with ``reaches(n)``, for a predicate that stays true once true
    (``reaches(start - 1)`` must be false): doubling, then bisection -- O(log n) calls."""
    lo, hi = start - 1, start
    while not reaches(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reaches(mid) else (mid, hi)
    return hi


def certified_at(k: np.ndarray | int, n: int, alpha: float, radius: float, sigma: float) -> np.ndarray | bool:
    """Whether ``k`` of ``n`` votes for a class **chosen before sampling** (e.g. the true label)
    certify that class at L2 radius ``radius``, elementwise: the one-sided ``(1 - alpha)``
    Clopper-Pearson lower bound ``p_lower`` on its probability satisfies ``p_lower > 1/2`` and
    ``p_lower >= Phi(radius / sigma)``, i.e. ``sigma * Phi^-1(p_lower) >= radius``.

    Guarantee, per image: if the smoothed classifier does not return that class on the whole
    ball of radius ``radius``, the result is True with probability at most ``alpha``. No
    selection samples are needed because the class is not chosen from the votes.

    Example::

        >>> bool(certified_at(10, 10, 0.001, 0.0, 0.25)), bool(certified_at(10, 10, 0.001, 0.01, 0.25))
        (True, False)
    """
    threshold = float(radius_thresholds([radius], sigma)[0])
    p_lower = np.asarray(clopper_pearson_lower_array(k, n, alpha))
    out = (p_lower > 0.5) & (p_lower >= threshold)
    return bool(out) if out.ndim == 0 else out


def min_samples_to_certify_radius(radius: float, sigma: float, alpha: float) -> int:
    """The smallest ``n`` for which :func:`certified_at` can ever be True at ``radius``: even
    unanimous votes give only ``p_lower = alpha ** (1/n)``, which must reach ``Phi(radius/sigma)``
    (and exceed 1/2). UserError if ``Phi(radius / sigma)`` rounds to 1 (no ``n`` suffices).

    Example::

        >>> min_samples_to_certify_radius(0.0, 0.25, 0.001), min_samples_to_certify_radius(0.25, 0.25, 0.001)
        (10, 40)
    """
    check_alpha(alpha)
    threshold = float(radius_thresholds([radius], sigma)[0])
    if threshold >= 1.0:
        raise UserError(f"radius {radius} is beyond what any number of samples can certify at sigma {sigma}")
    # no n below min_samples_to_certify certifies at all; the unanimous bound grows with n
    return _least(lambda m: float(clopper_pearson_lower_array(m, m, alpha)) >= threshold,
                  start=min_samples_to_certify(alpha))


def can_ever_certify(n: int, alpha: float, *, warn: bool = True) -> bool:
    """Whether ``n`` samples can ever certify at level ``alpha``; logs a warning if not."""
    need = min_samples_to_certify(alpha)
    if n < need:
        if warn:
            log.warning(
                "warning: n=%d samples can never certify at alpha=%g: even unanimous votes give a lower "
                "bound of %.4f <= 0.5; use n >= %d (typically 100000)", n, alpha, alpha ** (1.0 / n), need,
            )
        return False
    return True


# =============================================================================================
# Anytime-valid confidence sequences (sequential CERTIFY)
# =============================================================================================
#
# Every function below bounds the success probability ``p`` of i.i.d. Bernoulli draws from the
# running count ``k_t`` of successes among the first ``t`` draws. A *lower confidence sequence*
# ``(L_t)`` at level ``1 - alpha`` satisfies ``P[L_t <= p for every t simultaneously] >= 1 - alpha``
# (not merely for each fixed ``t``): it may be checked after every draw and the sampling stopped by
# any rule, and ``L_tau <= p`` still holds with probability ``>= 1 - alpha`` at the stopping time
# ``tau``. The tool is Ville's inequality: a nonnegative supermartingale ``M_t`` with ``M_0 = 1``
# crosses ``1/alpha`` with probability at most ``alpha``. The mixture and betting candidates
# build, for every hypothesis ``m`` (``H_m: p <= m``; ``p = m`` for the two-sided mixture), such a
# process ``M_t(m)`` and report ``L_t = sup{m : M_t(m') >= 1/alpha for every m' <= m}``; then
# ``L_t > p`` for some ``t`` needs ``M_t(p) >= 1/alpha`` for some ``t``. Staged Clopper-Pearson
# uses a union bound over a few fixed stages instead. Upper bounds are the mirror image
# (``p -> 1 - p``).
# Bounds are computed by vectorised bisection in float64 (numpy arrays of counts in, arrays out).


def _counts(k: np.ndarray | int, t: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(k)
    t = np.asarray(t)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(t.dtype, np.integer)):
        kf, tf = k.astype(float), t.astype(float)
        if np.any(kf != np.round(kf)) or np.any(tf != np.round(tf)):
            raise ValueError(f"counts must be integers, got k={k}, t={t}")
    k, t = np.broadcast_arrays(k.astype(np.float64), t.astype(np.float64))
    if np.any(t < 1) or np.any(k < 0) or np.any(k > t):
        raise ValueError(f"need 0 <= k <= t and t >= 1, got k={k}, t={t}")
    return k, t


def _mirror(lower: Callable[..., Any], k: np.ndarray | int, t: np.ndarray | int, alpha: float,
            **kwargs: Any) -> np.ndarray | float:
    """The upper bound that mirrors ``lower`` (``p -> 1 - p``): ``1 - lower(t - k, t, alpha)``."""
    kk, tt = _counts(k, t)
    return _scalar_or_array(1.0 - np.asarray(lower(
        (tt - kk).astype(np.int64), tt.astype(np.int64), alpha, **kwargs)), k)


def _scalar_or_array(value: np.ndarray, like: np.ndarray | int) -> np.ndarray | float:
    return float(value) if np.ndim(like) == 0 and value.ndim == 0 else value


def _bisect_rejected(rejected: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray,
                     iters: int = 64) -> np.ndarray:
    """Largest ``p`` (to float64 resolution) with ``rejected(p)`` in ``[lo, hi]``, elementwise,
    when ``rejected`` holds on ``[lo, L)`` and not on ``[L, hi]``. Returns the rejected end, so
    the answer never exceeds the true boundary (the conservative side for a lower bound)."""
    lo, hi = lo.astype(np.float64).copy(), hi.astype(np.float64).copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        rej = rejected(mid)
        lo = np.where(rej, mid, lo)
        hi = np.where(rej, hi, mid)
    return lo


def _log_betainc(a: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(betainc(a, b, x))


def one_sided_mixture_log_evidence(k: np.ndarray, t: np.ndarray, m: np.ndarray,
                                   a: float = 1.0, b: float = 0.1) -> np.ndarray:
    """``log M_t(m)``: the beta-binomial mixture of likelihood ratios against ``H_m: p <= m`` with
    the prior ``Beta(a, b)`` truncated to ``q > m``.

    ``M_t(m) = E_{q ~ Beta(a,b) | q > m} [ q^k (1-q)^(t-k) / (m^k (1-m)^(t-k)) ]`` in closed form::

        B(a+k, b+t-k) / B(a, b) * S(m; a+k, b+t-k) / S(m; a, b) / (m^k (1-m)^(t-k))

    with ``S`` the Beta survival function. Each likelihood ratio with ``q > m`` has conditional
    mean ``<= 1`` under any ``p <= m``, so ``M_t(m)`` is a nonnegative supermartingale with
    ``M_0 = 1`` under ``H_m`` (a martingale at ``p = m``).

    Args:
        k, t: successes and draws (arrays broadcast together). m: hypotheses in (0, 1).
        a, b: prior parameters (``b < 1`` puts more prior mass near 1; the default
            ``Beta(1, 0.1)`` is :data:`MIXTURE_PRIOR`).

    Example::

        >>> # uniform prior, 20 of 20: M = (2**21 - 1) / 21
        >>> round(float(one_sided_mixture_log_evidence(20, 20, 0.5, a=1.0, b=1.0)), 4)
        11.5116
    """
    k, t, m = (np.asarray(v, dtype=np.float64) for v in (k, t, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lik = k * np.log(m) + (t - k) * np.log1p(-m)
        # prior survival P[q > m]: (1 - m)^b in closed form when a = 1
        log_prior_sf = b * np.log1p(-m) if a == 1.0 else _log_betainc(b, a, 1.0 - m)
        out = (betaln(a + k, b + t - k) - betaln(a, b)
               + _log_betainc(b + t - k, a + k, 1.0 - m) - log_prior_sf - log_lik)
    return np.where(np.isnan(out), -np.inf, out)


def one_sided_mixture_lower(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                            a: float = 1.0, b: float = 0.1) -> np.ndarray | float:
    """Anytime-valid ``(1 - alpha)`` lower confidence sequence from the one-sided beta-binomial
    mixture (:func:`one_sided_mixture_log_evidence`).

    What holds: for i.i.d. Bernoulli(``p``) draws, with probability ``>= 1 - alpha`` the bound is
    ``<= p`` at **every** ``t = 1, 2, ...`` simultaneously (Ville's inequality applied to
    ``M_t(p)``). ``L = sup{m : M_t(m') >= 1/alpha for all m' <= m}``, found by bisection on
    ``(0, k/t]`` (``M_t(m)`` decreases in ``m`` there; ``M_t(k/t) <= 1``). ``k = 0`` gives 0;
    ``k = t`` gives a bound a little below ``alpha ** (1/t)`` (the fixed-``t`` Clopper-Pearson
    bound, which it can never exceed).

    Args:
        k, t: successes and draws, integers (or integer arrays), ``0 <= k <= t``, ``t >= 1``.
        alpha: error probability in (0, 1). a, b: the prior ``Beta(a, b)``.

    Example::

        >>> round(one_sided_mixture_lower(1000, 1000, 0.001), 5)   # fixed-n CP: 0.99312
        0.99287
    """
    check_alpha(alpha)
    kk, tt = _counts(k, t)
    log_c = math.log(1.0 / alpha)
    positive = kk > 0
    ks, ts = np.where(positive, kk, 1.0), tt
    lower = _bisect_rejected(lambda m: one_sided_mixture_log_evidence(ks, ts, m, a, b) >= log_c,
                             np.zeros_like(kk), ks / ts)
    return _scalar_or_array(np.where(positive, lower, 0.0), k)


def one_sided_mixture_upper(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                            a: float = 1.0, b: float = 0.1) -> np.ndarray | float:
    """Anytime-valid ``(1 - alpha)`` upper confidence sequence, the mirror image of
    :func:`one_sided_mixture_lower`: ``U(k, t) = 1 - L(t - k, t)`` with the prior mirrored
    (``Beta(b, a)`` truncated to ``q < m``). With probability ``>= 1 - alpha``, ``U_t >= p`` at
    every ``t``. ``k = t`` gives 1.

    Example::

        >>> one_sided_mixture_upper(10, 10, 0.01)
        1.0
    """
    return _mirror(one_sided_mixture_lower, k, t, alpha, a=b, b=a)


def beta_mixture_log_evidence(k: np.ndarray, t: np.ndarray, m: np.ndarray,
                              a: float = 0.5, b: float = 0.5) -> np.ndarray:
    """``log M_t(m)`` of the two-sided beta-binomial mixture ``E_{q ~ Beta(a,b)}[LR(q, m)]``::

        B(a+k, b+t-k) / B(a, b) / (m^k (1-m)^(t-k))

    a nonnegative martingale with ``M_0 = 1`` when ``p = m`` (convex in ``m``). At the ends
    ``0 log 0 = 0``: ``m = 1`` after ``t`` successes of ``t`` keeps its finite evidence, one
    failure makes it ``+inf`` (``p = 1`` is then impossible).
    """
    k, t, m = (np.asarray(v, dtype=np.float64) for v in (k, t, m))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = betaln(a + k, b + t - k) - betaln(a, b) - xlogy(k, m) - xlog1py(t - k, -m)
    return np.where(np.isnan(out), np.inf, out)


def beta_mixture_lower(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                       a: float = 0.5, b: float = 0.5) -> np.ndarray | float:
    """Lower end of the two-sided beta-binomial mixture confidence sequence
    ``{m : M_t(m) < 1/alpha}`` (:func:`beta_mixture_log_evidence`, an interval since
    ``log M_t`` is convex).

    What holds: with probability ``>= 1 - alpha``, ``beta_mixture_lower(k_t, t) <= p <=
    beta_mixture_upper(k_t, t)`` at every ``t`` simultaneously (one Ville event covers both ends,
    so each end alone is conservative at level ``alpha``). ``k = 0`` gives 0.

    Example::

        >>> round(beta_mixture_lower(1000, 1000, 0.001), 5)
        0.98913
    """
    check_alpha(alpha)
    kk, tt = _counts(k, t)
    log_c = math.log(1.0 / alpha)
    positive = kk > 0
    ks = np.where(positive, kk, 1.0)
    lower = _bisect_rejected(lambda m: beta_mixture_log_evidence(ks, tt, m, a, b) >= log_c,
                             np.zeros_like(kk), ks / tt)
    return _scalar_or_array(np.where(positive, lower, 0.0), k)


def beta_mixture_upper(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                       a: float = 0.5, b: float = 0.5) -> np.ndarray | float:
    """Upper end of the two-sided beta-binomial mixture confidence sequence (see
    :func:`beta_mixture_lower` for what holds). ``k = t`` gives 1.

    Example::

        >>> beta_mixture_upper(5, 5, 0.01)
        1.0
    """
    return _mirror(beta_mixture_lower, k, t, alpha, a=b, b=a)


def clopper_pearson_lower_array(k: np.ndarray | int, t: np.ndarray | int, alpha: float) -> np.ndarray | float:
    """Vectorised one-sided ``(1 - alpha)`` Clopper-Pearson lower bound (the ``alpha`` quantile of
    ``Beta(k, t - k + 1)``; 0 at ``k = 0``); equals :func:`clopper_pearson_lower` elementwise.
    Valid at ONE fixed ``t`` only.

    Example::

        >>> round(clopper_pearson_lower_array(10, 10, 0.001), 6)
        0.501187
    """
    check_alpha(alpha)
    kk, tt = _counts(k, t)
    out = np.where(kk > 0, beta_dist.ppf(alpha, np.maximum(kk, 1.0), tt - kk + 1.0), 0.0)
    return _scalar_or_array(out, k)


def clopper_pearson_upper_array(k: np.ndarray | int, t: np.ndarray | int, alpha: float) -> np.ndarray | float:
    """Vectorised one-sided ``(1 - alpha)`` Clopper-Pearson upper bound (``1 - alpha`` quantile of
    ``Beta(k + 1, t - k)``; 1 at ``k = t``). Valid at ONE fixed ``t`` only.

    Example::

        >>> clopper_pearson_upper_array(3, 3, 0.05)
        1.0
    """
    return _mirror(clopper_pearson_lower_array, k, t, alpha)


def staged_clopper_pearson_lower(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                                 stages: int) -> np.ndarray | float:
    """Bonferroni-staged Clopper-Pearson (Horvath et al., 2022): the one-sided Clopper-Pearson bound
    at level ``alpha / stages``, to be evaluated ONLY at ``stages`` sample counts fixed in advance.

    What holds: with probability ``>= 1 - alpha``, the bound is ``<= p`` at every one of the
    ``stages`` planned sample counts simultaneously (union bound over the stages), hence also at a
    stage chosen by any stopping rule. It is *not* valid at other sample counts.

    Example::

        >>> round(staged_clopper_pearson_lower(1000, 1000, 0.001, stages=5), 5)
        0.99152
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    check_alpha(alpha)
    return clopper_pearson_lower_array(k, t, alpha / stages)


def staged_clopper_pearson_upper(k: np.ndarray | int, t: np.ndarray | int, alpha: float,
                                 stages: int) -> np.ndarray | float:
    """Upper counterpart of :func:`staged_clopper_pearson_lower` (same guarantee, mirrored)."""
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    check_alpha(alpha)
    return clopper_pearson_upper_array(k, t, alpha / stages)


# Hypotheses on which the betting confidence sequence is evaluated: logit grid, fine enough that
# a radius is resolved to < 1e-3 sigma-units near p = 1.
_BET_GRID = expit(np.arange(-12.0, 14.0, 0.004))


def betting_lower(ks: np.ndarray, ts: np.ndarray, alpha: float, *, shrink: float = 0.5,
                  max_fraction: float = 0.95, grid: np.ndarray | None = None) -> np.ndarray | float:
    """Betting lower confidence sequence (Waudby-Smith & Ramdas, 2020, arXiv 2010.09686) with a
    predictable plug-in bet, from the counts at the looks made so far.

    For every grid hypothesis ``H_m: p <= m`` a gambler starts with capital 1 and bets a fraction
    ``lambda_j * m`` on each draw of block ``j`` (the draws between looks ``j-1`` and ``j``):
    capital ``*= 1 + lambda_j (X - m)``. ``lambda_j = nu_j / m`` with the fraction
    ``nu_j = clip(shrink * (p~ - m) / (1 - m), 0, max_fraction)`` (a shrunk Kelly bet), where
    ``p~ = (k + 1/2) / (t + 1)`` uses only the draws before block ``j`` (predictable). Under
    ``p <= m`` the capital is a nonnegative supermartingale; ``L = sup{m in grid : capital(m')
    >= 1/alpha for all grid m' <= m}``.

    What holds: with probability ``>= 1 - alpha``, the bound is ``<= p`` at every look (and it
    stays valid under any stopping rule and any look schedule fixed before sampling).

    Args:
        ks: ``[N, J]`` (or ``[J]``) cumulative successes at the looks so far.
        ts: ``[J]`` the looks' cumulative draw counts (increasing).
        alpha: error probability. shrink: Kelly fraction. max_fraction: cap on ``nu``.

    Example::

        >>> # 200 of 200 in two blocks: the first block bets nothing above 1/2 (no data yet)
        >>> round(betting_lower(np.array([100, 200]), np.array([100, 200]), 0.001), 3)
        0.87
    """
    check_alpha(alpha)
    ks2 = np.atleast_2d(np.asarray(ks, dtype=np.float64))
    ts1 = np.asarray(ts, dtype=np.float64)
    grid = _BET_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    prev_k = np.concatenate([np.zeros((ks2.shape[0], 1)), ks2[:, :-1]], axis=1)
    prev_t = np.concatenate([[0.0], ts1[:-1]])
    s = ks2 - prev_k                      # successes per block  [N, J]
    f = (ts1 - prev_t)[None] - s          # failures per block   [N, J]
    est = (prev_k + 0.5) / (prev_t + 1.0)[None]
    m = grid[None, :]
    log_cap = np.zeros((ks2.shape[0], grid.size))
    odds = (1.0 - m) / m
    for j in range(ks2.shape[1]):
        nu = np.clip(shrink * (est[:, j:j + 1] - m) / (1.0 - m), 0.0, max_fraction)   # [N, G]
        log_cap += s[:, j:j + 1] * np.log1p(nu * odds) + f[:, j:j + 1] * np.log1p(-nu)
    rejected = log_cap >= math.log(1.0 / alpha)
    # number of leading rejected grid points (all m' <= m rejected)
    lead = np.argmin(np.concatenate([rejected, np.zeros((rejected.shape[0], 1), bool)], axis=1), axis=1)
    out = np.where(lead > 0, grid[np.maximum(lead - 1, 0)], 0.0)
    return float(out[0]) if np.ndim(ks) == 1 else out


def betting_upper(ks: np.ndarray, ts: np.ndarray, alpha: float, **kwargs: float) -> np.ndarray | float:
    """Mirror image of :func:`betting_lower` (betting on failures): with probability
    ``>= 1 - alpha`` the bound is ``>= p`` at every look."""
    ks = np.asarray(ks, dtype=np.float64)
    ts1 = np.asarray(ts, dtype=np.float64)
    out = betting_lower(ts1 - ks, ts1, alpha, **kwargs)
    return 1.0 - np.asarray(out) if np.ndim(out) else 1.0 - out


# ---------------------------------------------------------------------------------------------
# Look schedules and the registry of confidence sequences
# ---------------------------------------------------------------------------------------------

def look_schedule(n_max: int, unit: int = 100, ratio: float = 1.2, first: int | None = None) -> tuple[int, ...]:
    """The sample counts at which a sequential test looks at its votes: geometric (each look
    ``~ratio`` times the previous), multiples of ``unit``, ending exactly at ``n_max``.

    The schedule depends only on its arguments (never on the batch size or on which images
    share a forward pass), so batching cannot change a sequential decision.

    Args:
        n_max: the last look (>= 1). unit: looks are multiples of it (the noise chunk).
        ratio: growth factor (> 1). first: the first look (default ``unit``).

    Example::

        >>> look_schedule(2000, unit=100, ratio=1.5)
        (100, 200, 300, 500, 800, 1200, 1800, 2000)
    """
    if n_max < 1 or unit < 1 or not ratio > 1:
        raise ValueError(f"need n_max >= 1, unit >= 1, ratio > 1; got {n_max}, {unit}, {ratio}")
    t = max(unit, math.ceil((unit if first is None else first) / unit) * unit)
    looks = []
    while t < n_max:
        looks.append(t)
        t = max(t + unit, math.ceil(t * ratio / unit - 1e-9) * unit)
    looks.append(int(n_max))
    return tuple(looks)


def staged_schedule(n_max: int, unit: int = 100, stages: int = 12, first: int = 1000) -> tuple[int, ...]:
    """``stages`` geometrically spaced sample counts from ``~first`` to ``n_max`` (multiples of
    ``unit``, deduplicated), the stages of :func:`staged_clopper_pearson_lower`.

    Example::

        >>> staged_schedule(100_000, stages=5)
        (1000, 3200, 10000, 31600, 100000)
    """
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    first = min(max(first, unit), n_max)
    r = (n_max / first) ** (1.0 / (stages - 1)) if stages > 1 else 1.0
    looks = sorted({min(n_max, max(unit, round(first * r ** j / unit) * unit)) for j in range(stages - 1)} | {n_max})
    return tuple(int(t) for t in looks)


# Standard deviations of luck allowed by the projected futility rule (ConfidenceSequence.best_lower).
PROJECTION_Z = 3.0

# A bound evaluated at the looks made so far: (ks [N, J] cumulative successes at the looks,
# ts [J] the looks' sample counts, alpha, the whole planned schedule) -> [N] bounds at look J.
PathBound = Callable[[np.ndarray, np.ndarray, float, Sequence[int]], np.ndarray]


@dataclass(frozen=True)
class ConfidenceSequence:
    """A named ``(1 - alpha)`` confidence sequence for a Bernoulli mean, as used by sequential
    CERTIFY: the look schedule it must be evaluated on, and its lower/upper bounds at a look.

    Attributes:
        name: registry key.
        lower, upper: :data:`PathBound` functions ``(ks, ts, alpha, looks)``. ``lower`` is valid
            simultaneously over all looks of ``schedule`` with probability ``>= 1 - alpha``; so
            is ``upper`` (separately).
        schedule: ``(n_max, unit) -> looks``.
        path_free: the bounds depend only on the last ``(k, t)`` (not on earlier looks).
        anytime: valid at every sample count, not only at ``schedule``'s looks.
    """

    name: str
    lower: PathBound
    upper: PathBound
    schedule: Callable[[int, int], tuple[int, ...]]
    path_free: bool
    anytime: bool

    def best_lower(self, ks: np.ndarray, looks: Sequence[int], alpha: float,
                   rate: np.ndarray | None = None, z: float = PROJECTION_Z) -> np.ndarray:
        """The lower bound at the last look ``looks[-1]`` if the draws after look ``J =
        ks.shape[1]`` were successes: all of them (``rate=None``: the largest bound the run can
        still reach), or ``m * rate + z * sqrt(m * rate * (1 - rate))`` of the ``m`` draws up to
        each later look (``rate``: ``[N]``, e.g. the upper confidence bound -- an optimistic
        projection that also allows ``z`` standard deviations of luck), rounded up, at most ``m``.

        Example::

            >>> seq = confidence_sequence("mixture")
            >>> looks = seq.schedule(1000, 100)
            >>> float(seq.best_lower(np.array([[100]]), looks, 0.01)[0]) == float(
            ...     seq.lower(np.array([[1000]]), np.array([1000]), 0.01, looks)[0])
            True
        """
        ks = np.atleast_2d(np.asarray(ks, dtype=np.int64))
        looks_arr = np.asarray(looks, dtype=np.int64)
        j = ks.shape[1]
        ahead = (looks_arr[None, j:] - looks_arr[j - 1]).astype(np.float64)
        if rate is not None:
            ahead = projected_successes(ahead, np.asarray(rate, dtype=np.float64).reshape(-1, 1), z)
        path = np.concatenate([ks, ks[:, -1:] + ahead.astype(np.int64)], axis=1)
        if self.path_free:
            return self.lower(path[:, -1:], looks_arr[-1:], alpha, tuple(looks))
        return self.lower(path, looks_arr, alpha, tuple(looks))


def projected_successes(draws: np.ndarray | float, rate: np.ndarray | float, z: float = PROJECTION_Z) -> np.ndarray:
    """Successes an optimistic projection grants among ``draws`` further draws at ``rate``:
    ``draws * rate + z * sqrt(draws * rate * (1 - rate))`` (``z`` standard deviations of luck),
    rounded up, at most ``draws`` (``rate`` is clipped to [0, 1]). The futility rules of
    sequential CERTIFY (:meth:`ConfidenceSequence.best_lower`) and PREDICT use it.

    Example::

        >>> projected_successes(np.array([100.0]), 0.5, z=2.0).tolist()
        [60.0]
    """
    d = np.asarray(draws, dtype=np.float64)
    r = np.clip(np.asarray(rate, dtype=np.float64), 0.0, 1.0)
    return np.minimum(np.ceil(d * r + z * np.sqrt(d * r * (1.0 - r)) - 1e-9), d)


# Prior of the one-sided beta-binomial mixture: Beta(1, 0.1) puts most mass near q = 1, where most
# images' p_A lies (see confidence_sequence for the measurements behind the choice).
MIXTURE_PRIOR = (1.0, 0.1)

# Share of alpha that the default sequence spends on one fixed-n Clopper-Pearson stage at n_max.
CP_SHARE = 0.25


def mixture_cp_lower(k: np.ndarray | int, t: np.ndarray | int, alpha: float, n_max: int,
                     cp_share: float = CP_SHARE, *,
                     prior: tuple[float, float] = MIXTURE_PRIOR) -> np.ndarray | float:
    """The default lower confidence sequence: the one-sided mixture
    (:func:`one_sided_mixture_lower`, ``prior``: :data:`MIXTURE_PRIOR` by default) at level
    ``(1 - cp_share) alpha`` at every ``t``, and at ``t = n_max`` the larger of it and the fixed-n
    one-sided Clopper-Pearson bound at level ``cp_share * alpha``.

    What holds: with probability ``>= 1 - alpha`` the bound is ``<= p`` at every ``t <= n_max``
    simultaneously (union of the mixture's Ville event, ``<= (1 - cp_share) alpha``, and the
    single fixed-n Clopper-Pearson event at the pre-set ``n_max``, ``<= cp_share * alpha``;
    Clopper-Pearson at ``n_max`` is only *evaluated* when the run reaches ``n_max``, but its
    error event is defined on the whole stream either way). Early stops pay a little (``alpha``
    shrinks by ``1 - cp_share``); runs that reach ``n_max`` -- those near a radius threshold --
    get nearly the fixed-n bound.

    Example::

        >>> cp = clopper_pearson_lower(99_000, 100_000, 0.001 * 0.25)
        >>> mixture_cp_lower(99_000, 100_000, 0.001, n_max=100_000) == cp
        True
    """
    if not 0.0 < cp_share < 1.0:
        raise ValueError(f"cp_share must lie in (0, 1), got {cp_share}")
    check_alpha(alpha)
    kk, tt = _counts(k, t)
    a, b = prior
    lower = np.asarray(one_sided_mixture_lower(k, t, alpha * (1.0 - cp_share), a=a, b=b), dtype=np.float64)
    at_end = tt == n_max
    if np.any(at_end):
        lower = np.where(at_end, np.maximum(lower, clopper_pearson_lower_array(
            kk.astype(np.int64), tt.astype(np.int64), alpha * cp_share)), lower)
    return _scalar_or_array(lower, k)


def mixture_cp_upper(k: np.ndarray | int, t: np.ndarray | int, alpha: float, n_max: int,
                     cp_share: float = CP_SHARE) -> np.ndarray | float:
    """Upper counterpart of :func:`mixture_cp_lower` (same guarantee, mirrored: ``>= p`` at every
    ``t <= n_max`` with probability ``>= 1 - alpha``): ``1 - mixture_cp_lower(t - k, t)`` with the
    prior mirrored, i.e. the smaller of :func:`one_sided_mixture_upper` and, at ``t = n_max``, the
    fixed-n Clopper-Pearson upper bound.

    Example::

        >>> mixture_cp_upper(10, 10, 0.01, n_max=100)
        1.0
    """
    a, b = MIXTURE_PRIOR
    return _mirror(mixture_cp_lower, k, t, alpha, n_max=n_max, cp_share=cp_share, prior=(b, a))


def _last(fn: Callable[..., Any], **kw: Any) -> PathBound:
    def bound(ks: np.ndarray, ts: np.ndarray, alpha: float, looks: Sequence[int]) -> np.ndarray:
        ks = np.atleast_2d(np.asarray(ks, dtype=np.int64))
        return np.asarray(fn(ks[:, -1], int(np.asarray(ts)[-1]), alpha, **kw), dtype=np.float64).reshape(-1)
    return bound


def _with_n_max(fn: Callable[..., Any]) -> PathBound:
    def bound(ks: np.ndarray, ts: np.ndarray, alpha: float, looks: Sequence[int]) -> np.ndarray:
        ks = np.atleast_2d(np.asarray(ks, dtype=np.int64))
        return np.asarray(fn(ks[:, -1], int(np.asarray(ts)[-1]), alpha, n_max=int(looks[-1])),
                          dtype=np.float64).reshape(-1)
    return bound


def _staged(fn: Callable[..., Any]) -> PathBound:
    def bound(ks: np.ndarray, ts: np.ndarray, alpha: float, looks: Sequence[int]) -> np.ndarray:
        ks = np.atleast_2d(np.asarray(ks, dtype=np.int64))
        return np.asarray(fn(ks[:, -1], int(np.asarray(ts)[-1]), alpha, stages=len(looks)),
                          dtype=np.float64).reshape(-1)
    return bound


def _path(fn: Callable[..., Any]) -> PathBound:
    def bound(ks: np.ndarray, ts: np.ndarray, alpha: float, looks: Sequence[int]) -> np.ndarray:
        return np.asarray(fn(np.atleast_2d(ks), np.asarray(ts), alpha, shrink=1.0), dtype=np.float64).reshape(-1)
    return bound


def _dense(n_max: int, unit: int) -> tuple[int, ...]:
    return look_schedule(n_max, unit, ratio=1.2)


CONFIDENCE_SEQUENCES: dict[str, ConfidenceSequence] = {
    "mixture_cp": ConfidenceSequence(
        "mixture_cp", _with_n_max(mixture_cp_lower), _with_n_max(mixture_cp_upper), _dense,
        path_free=True, anytime=False),
    "mixture": ConfidenceSequence(
        "mixture", _last(one_sided_mixture_lower, a=MIXTURE_PRIOR[0], b=MIXTURE_PRIOR[1]),
        _last(one_sided_mixture_upper, a=MIXTURE_PRIOR[0], b=MIXTURE_PRIOR[1]), _dense,
        path_free=True, anytime=True),
    "mixture_uniform": ConfidenceSequence(
        "mixture_uniform", _last(one_sided_mixture_lower, a=1.0, b=1.0),
        _last(one_sided_mixture_upper, a=1.0, b=1.0), _dense, path_free=True, anytime=True),
    "two_sided_mixture": ConfidenceSequence(
        "two_sided_mixture", _last(beta_mixture_lower), _last(beta_mixture_upper), _dense,
        path_free=True, anytime=True),
    "staged_cp": ConfidenceSequence(
        "staged_cp", _staged(staged_clopper_pearson_lower), _staged(staged_clopper_pearson_upper),
        lambda n_max, unit: staged_schedule(n_max, unit, stages=12), path_free=True, anytime=False),
    "betting": ConfidenceSequence(
        "betting", _path(betting_lower), _path(betting_upper),
        lambda n_max, unit: look_schedule(n_max, unit, ratio=1.5), path_free=False, anytime=False),
}

DEFAULT_SEQUENCE = "mixture_cp"


def confidence_sequence(name: str = DEFAULT_SEQUENCE) -> ConfidenceSequence:
    """The confidence sequence registered as ``name``; the default is ``"mixture_cp"``.

    **Default, ``mixture_cp``**: the one-sided beta-binomial mixture (:func:`one_sided_mixture_lower`
    / :func:`one_sided_mixture_upper`, prior :data:`MIXTURE_PRIOR` = ``Beta(1, 0.1)`` truncated to
    the alternative side) at level ``0.75 alpha`` at every look, plus ONE fixed-n Clopper-Pearson
    stage at ``n_max`` at level ``0.25 alpha`` (:func:`mixture_cp_lower`), looked at on
    :func:`look_schedule` with ratio 1.2 (33 looks up to 100,000). What holds: with probability
    ``>= 1 - alpha`` the lower bound is ``<= p_A`` at every look simultaneously, whatever rule
    decides when to stop (likewise, separately, the upper bound is ``>= p_A``). Other entries:
    ``mixture`` (the mixture alone at ``alpha``; valid at every ``t``, no ``n_max`` needed),
    ``mixture_uniform`` (prior ``Beta(1, 1)``), ``two_sided_mixture`` (Jeffreys prior, both ends
    from one Ville event), ``staged_cp`` (Clopper-Pearson at ``alpha / 12`` at 12 geometric
    stages from 1,000, Horvath et al. 2022), ``betting`` (Waudby-Smith & Ramdas' betting CS with a
    block-wise Kelly plug-in bet on a 6,500-point grid of hypotheses, looks with ratio 1.5).

    Why -- measured by ``experiments/bench_sequential.py`` (section ``sequences``; numbers in
    ``experiments/results/bench_sequential_cpu.json``), ``n_max = 100,000``, ``alpha = 0.001``,
    ``sigma = 0.25``:

    (a) Width ``k/t - L_t`` relative to the fixed-``t`` Clopper-Pearson width (1.00 = CP, which no
        valid bound monotone in ``k`` can beat at a fixed ``t``), at ``k = p t``, for
        ``p = 0.99 / 0.9 / 0.7 / 0.55``:

        =================  ======================  ======================  ======================
        sequence           t = 1,000               t = 10,000              t = 100,000 (n_max)
        =================  ======================  ======================  ======================
        mixture_cp         1.50 1.54 1.56 1.57     1.55 1.61 1.64 1.65     1.13 1.13 1.13 1.13
        mixture            1.47 1.52 1.54 1.55     1.53 1.59 1.62 1.63     1.59 1.65 1.69 1.71
        mixture_uniform    1.32 1.36 1.38 1.40     1.36 1.43 1.46 1.48     1.43 1.50 1.54 1.56
        two_sided_mixture  1.57 1.51 1.49 1.47     1.62 1.58 1.57 1.56     1.67 1.65 1.64 1.64
        staged_cp          1.27 1.23 1.22 1.22     1.24 1.22 1.22 1.22     1.23 1.22 1.22 1.22
        betting            1.29 1.27 1.27 1.24     1.23 1.24 1.24 1.23     1.24 1.27 1.28 1.26
        =================  ======================  ======================  ======================

        (staged CP only at its stages; these ``t`` are treated as if they were stages.) On
        unanimous votes, samples until ``L_t >= Phi(3)`` (radius 0.75 certified): fixed-n CP
        5,114 (not sequential); mixture_cp and mixture 5,800 (the first look after ~5,300);
        mixture_uniform 7,000; staged CP 8,100; betting and two-sided 9,300 / 10,100.
    (b) Mean / median samples to decide the radii 0.25, 0.5, 0.75, 1.0 on a simulated population
        of 3,000 images (``bench_sequential.population``: 46 % unanimous, 29 % with
        ``1 - p_A`` log-uniform in [1e-5, 0.03], 17 % uniform in [0.6, 0.97], 8 % in
        [0.3, 0.6]), with the projected futility rule of ``Smooth.certify_sequential``, and the
        change in certified accuracy at r = 0.25 / 0.5 / 0.75 against fixed-n CERTIFY on the same
        stream (percentage points):

        ============================  ===============  ========  ======================
        sequence                      mean / median    x fewer   accuracy change
        ============================  ===============  ========  ======================
        mixture_cp (default)           8,926 / 5,800   11.2      -0.03  0.00 -0.20
        mixture                        8,585 / 5,800   11.6      -0.13 -0.10 -0.60
        mixture_uniform                9,377 / 7,000   10.7      -0.07  0.00 -0.50
        two_sided_mixture             11,501 / 10,100   8.7      -0.13 -0.20 -0.57
        staged_cp                     10,126 / 8,100    9.9      -0.07  0.00 -0.20
        betting (1,000 images)        13,307 / 9,300    7.5      -0.10 -0.10 -0.40
        mixture_cp, unanimous rule    10,341 / 5,800    9.7      -0.03  0.00 -0.20
        ============================  ===============  ========  ======================

        On the digits_cnn of ``bench_sequential`` (60 test images, real ``Smooth`` runs):
        mixture_cp 11,060 samples per image (x9.0) with identical certified accuracy; mixture
        9,693 (x10.3) but one image fewer certified at r = 0.5 (-1.7 points).
    (c) Compute per look (lower + upper + best-case bound, vectorised): ~70 ms per 1,000 images
        for the mixtures (64-step bisection over ``betainc``), ~12 ms two-sided, ~8 ms staged CP,
        ~3 s betting -- negligible next to the forward passes except for betting.

    The default trades a little of ``mixture``'s speed (the default's looks run at ``0.75 alpha``)
    for near-fixed-n accuracy on the images that run to ``n_max`` -- those sitting near a radius
    threshold, where a confidence sequence is ~1.6x wider than Clopper-Pearson. The small prior
    parameter ``b = 0.1`` buys the fastest stop on (near-)unanimous votes, most images. Betting
    and staged CP are tighter at a fixed ``t`` but stop later (betting wastes its first blocks
    estimating the bet; staged CP can only stop at its few stages and pays ``alpha / 12``).

    Example::

        >>> seq = confidence_sequence()
        >>> seq.name, seq.schedule(2000, 100)[:5]
        ('mixture_cp', (100, 200, 300, 400, 500))
    """
    try:
        return CONFIDENCE_SEQUENCES[name]
    except KeyError:
        raise UserError(f"unknown confidence sequence {name!r}; use one of "
                        f"{', '.join(CONFIDENCE_SEQUENCES)}") from None


def radius_thresholds(radii: Sequence[float], sigma: float) -> np.ndarray:
    """``Phi(r / sigma)`` for each target radius: ``p_A`` must be lower-bounded by this to certify
    radius ``r``.

    Example::

        >>> radius_thresholds([0.0, 0.25], 0.25).round(4).tolist()
        [0.5, 0.8413]
    """
    r = np.asarray(list(radii), dtype=np.float64)
    if r.size and (np.any(r < 0) or not np.all(np.isfinite(r))):
        raise UserError(f"target radii must be finite and >= 0, got {list(radii)}")
    if sigma <= 0:
        raise UserError(f"sigma must be > 0, got {sigma}")
    return norm.cdf(r / sigma)


def sequential_done(lower: np.ndarray, upper: np.ndarray, best: np.ndarray, sigma: float,
                    thresholds: np.ndarray | None = None, radius_tol: float = 0.02) -> np.ndarray:
    """Which images may stop sampling, elementwise (the stopping rule of sequential CERTIFY).

    Args:
        lower, upper: ``[N]`` current (running) lower / upper bounds on ``p_A``.
        best: ``[N]`` the lower bound the run could still reach (:meth:`ConfidenceSequence.best_lower`).
        sigma: noise level. thresholds: ``Phi(r / sigma)`` per target radius, or ``None``.
        radius_tol: with no targets, stop once the radius is pinned down to this width.

    With targets, a radius is decided when certified (``lower >= threshold`` and ``lower > 1/2``),
    refuted (``upper < threshold``) or out of reach (``best < threshold``); stop when all are.
    Without targets, stop when ``upper <= 1/2`` or ``best <= 1/2`` (it will abstain) or when
    ``sigma * (Phi^-1(min(upper, best)) - Phi^-1(lower))`` (both clipped at 1/2) is below
    ``radius_tol``. Stopping never affects validity -- the lower bound is anytime-valid.

    Example::

        >>> sequential_done(np.array([0.99, 0.6]), np.array([1.0, 0.99]), np.array([0.9999, 0.9999]),
        ...                 0.25, radius_thresholds([0.5], 0.25)).tolist()
        [True, False]
    """
    lower, upper, best = (np.asarray(v, dtype=np.float64) for v in (lower, upper, best))
    if thresholds is not None:
        thr = np.asarray(thresholds, dtype=np.float64)[None, :]
        certified = (lower[:, None] >= thr) & (lower[:, None] > 0.5)
        undecided = ~(certified | (upper[:, None] < thr) | (best[:, None] < thr))
        return ~undecided.any(axis=1) | (upper <= 0.5)
    hi = np.minimum(upper, best)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = sigma * (norm.ppf(np.maximum(hi, 0.5)) - norm.ppf(np.maximum(lower, 0.5)))
    return (upper <= 0.5) | (best <= 0.5) | (width < radius_tol)
