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

from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from robustmaxup.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "clopper_pearson_lower", "certified_radius", "binomial_test_pvalue", "min_samples_to_certify",
    "min_samples_to_predict",
    "can_ever_certify", "check_alpha",
]


def check_alpha(alpha: float) -> None:
    """UserError unless ``0 < alpha < 1``."""
    if not (0.0 < float(alpha) < 1.0):
        raise UserError(f"alpha must lie in (0, 1), got {alpha}; e.g. --alpha 0.001")


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


def can_ever_certify(n: int, alpha: float, *, warn: bool = True) -> bool:
    """Whether ``n`` samples can ever certify at level ``alpha``; logs a warning if not."""
    need = min_samples_to_certify(alpha)
    if n < need:
        if warn:
            log.warning(
                "n=%d samples can never certify at alpha=%g: even unanimous votes give a lower "
                "bound of %.4f <= 0.5; use n >= %d (typically 100000)", n, alpha, alpha ** (1.0 / n), need,
            )
        return False
    return True
