"""Paired statistics of the comparison studies, in plain Python (no SciPy): the studies report every difference with
its power (docs/results.md).

* :func:`mcnemar_exact`: inside one seed, two arms scored on the same questions: the exact two-sided McNemar test
  on the discordant questions (a binomial test of b against b + c at one half).
* :func:`t_interval`: across seeds, the mean paired difference with its Student-t confidence interval.
* :func:`sign_flip_p`: across seeds, the exact two-sided sign-flip (paired permutation) p-value of the mean.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
# beyond the table, ``(1 / df, quantile)`` at 30 (the table's last), 40, 60, 120 and infinite degrees of freedom
_T975_TAIL = ((1 / len(_T975), _T975[-1]), (1 / 40, 2.021), (1 / 60, 2.000), (1 / 120, 1.980), (0.0, 1.960))


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom.

    A table up to 30 degrees of freedom; beyond, linear in ``1 / df`` between the table's 30, 40, 60 and 120 and the
    normal's 1.96 (the usual interpolation of printed t tables: within 0.001 of the exact quantile)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    x = 1 / df
    for (x_hi, q_hi), (x_lo, q_lo) in itertools.pairwise(_T975_TAIL):
        if x_lo <= x <= x_hi:
            return q_lo + (q_hi - q_lo) * (x - x_lo) / (x_hi - x_lo)
    raise AssertionError("unreachable: 1 / df lies in (0, 1 / 30)")


def t_interval(diffs: Sequence[float]) -> dict[str, float]:
    """``{"mean", "low", "high", "half_width", "n"}``: the 95% t interval of the mean of ``diffs`` (n >= 2; with one
    value the interval is unbounded)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no differences")
    mean = statistics.fmean(diffs)
    if n == 1:
        return {"mean": mean, "low": -math.inf, "high": math.inf, "half_width": math.inf, "n": 1}
    half = t_quantile_975(n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "n": n}


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (the doubled smaller tail, at most 1)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test of two arms' per-question correctness on the same questions.

    Returns ``{"only_first", "only_second", "p"}``: the discordant counts and the two-sided p-value."""
    if len(first) != len(second):
        raise ValueError(f"the two arms were scored on different questions ({len(first)} vs {len(second)})")
    only_first = sum(1 for a, b in zip(first, second) if a and not b)
    only_second = sum(1 for a, b in zip(first, second) if b and not a)
    return {
        "only_first": only_first,
        "only_second": only_second,
        "p": binomial_two_sided_p(only_first, only_first + only_second),
    }


def _signed_sums(values: Sequence[float]) -> list[float]:
    """The sums of ``values`` under all ``2**len(values)`` sign patterns."""
    sums = [0.0]
    for v in values:
        sums = [s + v for s in sums] + [s - v for s in sums]
    return sums


SIGN_FLIP_MAX_N = 40


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p-value of the mean of paired differences under random sign flips.

    Counts, among all ``2**n`` sign patterns, those whose ``|sum|`` reaches the observed one. Meet in the middle: the
    signed sums of each half of the differences (``2**(n/2)`` each), one half sorted and searched, so 24 seeds cost
    two lists of 4,096 and 40 two of about a million; beyond ``SIGN_FLIP_MAX_N`` it raises rather than run for hours."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no differences")
    if n > SIGN_FLIP_MAX_N:
        raise ValueError(f"sign_flip_p counts 2**n sign patterns exactly; n = {n} is more than {SIGN_FLIP_MAX_N}")
    tol = 1e-9 * max(1.0, sum(abs(d) for d in diffs))  # the sums below add in another order than sum(diffs)
    reach = abs(sum(diffs)) - tol
    if reach <= 0:
        return 1.0  # every pattern's |sum| reaches an observed sum of zero
    first = _signed_sums(diffs[: n // 2])
    second = sorted(_signed_sums(diffs[n // 2 :]))
    hits = 0
    for a in first:
        hits += len(second) - bisect.bisect_left(second, reach - a)  # a + b >= reach
        hits += bisect.bisect_right(second, -reach - a)  # a + b <= -reach (disjoint from the above: reach > 0)
    return hits / 2**n
