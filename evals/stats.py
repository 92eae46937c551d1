"""Uncertainty of per-user means: bootstrap confidence intervals and paired model comparisons.

Every function is NaN-aware (users whose value is undefined are dropped, as in the metric means),
seeded, and vectorised over resamples.

Example:
    >>> import numpy as np
    >>> ci = bootstrap_ci(np.array([0.2, 0.4, np.nan, 0.6]), seed=0)
    >>> round(ci.mean, 3), ci.n, ci.low <= ci.mean <= ci.high
    (0.4, 3, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

# (resamples x users) index matrices are generated in blocks of about this many entries, so a
# 100k-user bootstrap does not allocate gigabytes at once
_BLOCK_ENTRIES = 8_000_000


@dataclass(frozen=True)
class ConfidenceInterval:
    """A mean with its percentile-bootstrap confidence interval."""

    mean: float
    """Mean over the finite values."""
    low: float
    """Lower bound of the interval."""
    high: float
    """Upper bound of the interval."""
    n: int
    """Number of finite values the mean is over."""
    level: float
    """Coverage of the interval, e.g. 0.95."""


def _bootstrap_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    per_block = max(1, _BLOCK_ENTRIES // max(n, 1))
    out = np.empty(n_resamples)
    for s in range(0, n_resamples, per_block):
        b = min(per_block, n_resamples - s)
        idx = rng.integers(0, n, size=(b, n))
        out[s:s + b] = values[idx].mean(axis=1)
    return out


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> ConfidenceInterval:
    """Percentile bootstrap CI of the mean of the finite entries of ``values`` (users resampled
    with replacement).

    No finite value: every field NaN (``n = 0``). One value: a zero-width interval.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return ConfidenceInterval(float("nan"), float("nan"), float("nan"), 0, level)
    means = _bootstrap_means(v, n_resamples, np.random.default_rng(seed))
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return ConfidenceInterval(float(v.mean()), float(lo), float(hi), len(v), level)


@dataclass(frozen=True)
class PairedComparison:
    """A model against a reference model on the same users (only users where both are finite)."""

    mean: float
    """The model's mean over the paired users."""
    reference_mean: float
    """The reference model's mean over the same users."""
    difference: float
    """``mean - reference_mean`` (= mean of the per-user differences)."""
    ratio: float
    """``mean / reference_mean`` (NaN when the reference mean is 0)."""
    ci_low: float
    """Lower bound of the bootstrap CI of the difference."""
    ci_high: float
    """Upper bound of the bootstrap CI of the difference."""
    p_value: float
    """Two-sided p-value of the paired test (1.0 when every difference is 0)."""
    n: int
    """Number of paired users."""
    test: str
    """``wilcoxon`` (signed-rank) or ``t`` (paired t-test)."""


def paired_comparison(values: np.ndarray, reference: np.ndarray, n_resamples: int = 1000,
                      level: float = 0.95, seed: int = 0,
                      test: Literal["wilcoxon", "t"] = "wilcoxon") -> PairedComparison:
    """Compare per-user ``values`` of a model with a ``reference`` model's, user by user.

    The CI of the difference resamples *users* (pairs), keeping the pairing. Fewer than two
    paired users: the test and the CI are NaN.

    Example:
        >>> import numpy as np
        >>> c = paired_comparison(np.array([0.5, 0.6, 0.7, np.nan]), np.array([0.4, 0.5, 0.6, 0.9]))
        >>> c.n, round(c.difference, 3), round(c.ratio, 3)
        (3, 0.1, 1.2)
    """
    if test not in ("wilcoxon", "t"):
        raise ValueError(f"test must be 'wilcoxon' or 't', got {test!r}")
    a = np.asarray(values, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"values ({a.shape[0]}) and reference ({b.shape[0]}) must have one entry per user each")
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    n = len(a)
    nan = float("nan")
    if n == 0:
        return PairedComparison(nan, nan, nan, nan, nan, nan, nan, 0, test)
    ma, mb = float(a.mean()), float(b.mean())
    diff = a - b
    ratio = ma / mb if mb != 0 else nan
    if n < 2:
        return PairedComparison(ma, mb, ma - mb, ratio, nan, nan, nan, n, test)
    ci = bootstrap_ci(diff, n_resamples, level, seed)
    if not np.any(diff != 0):
        p = 1.0  # identical models: both scipy tests are undefined here
    elif test == "wilcoxon":
        p = float(sps.wilcoxon(a, b).pvalue)
    else:
        p = float(sps.ttest_rel(a, b).pvalue)
    return PairedComparison(ma, mb, ma - mb, ratio, ci.low, ci.high, p, n, test)
