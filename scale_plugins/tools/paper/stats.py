"""Paired statistics of the comparison studies, in plain Python (no SciPy): the studies report every difference with
its power (docs/results.md).

* :func:`mcnemar_exact`: inside one seed, two arms scored on the same questions: the exact two-sided McNemar test
  on the discordant questions (a binomial test of b against b + c at one half).
* :func:`t_interval`: across seeds, the mean paired difference with its Student-t confidence interval.
* :func:`sign_flip_p`: across seeds, the exact two-sided sign-flip (paired permutation) p-value of the mean.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

# two-sided 95% quantiles of Student's t, by degrees of freedom (1..30); beyond 30 the normal's 1.96 is within 2%
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (a table; 1.96 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


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


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Exact two-sided p-value of the mean of paired differences under random sign flips (all 2**n flips; n <= 20)."""
    n = len(diffs)
    if n == 0:
        raise ValueError("no differences")
    if n > 20:
        raise ValueError(f"sign_flip_p enumerates 2**n flips; n = {n} is too many")
    observed = abs(sum(diffs))
    hits = sum(
        1
        for signs in itertools.product((1, -1), repeat=n)
        if abs(sum(s * d for s, d in zip(signs, diffs))) >= observed - 1e-12
    )
    return hits / 2**n
