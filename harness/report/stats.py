"""Statistics for the report: bootstrap intervals over seeds, a paired sign-flip test, the Pareto set.

Every resampling uses its own `numpy.random.Generator` seeded with `BOOTSTRAP_SEED`, so a report
rebuilt from the same runs prints the same intervals.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000  # percentile bootstrap; Monte Carlo error of a 95% bound is ~0.2 percentile points
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
EXACT_SIGN_FLIP_MAX_N = 16  # up to 2**16 sign patterns are enumerated exactly; beyond, sampled
SIGN_FLIP_SAMPLES = 100_000
ALPHA = 0.05


def _percentile_interval(stats: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_mean_ci(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean: seeds resampled with replacement.

    NaN for fewer than two values: one seed says nothing about the spread.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    return _percentile_interval(means)


def bootstrap_mean_ci_columns(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                              seed: int = BOOTSTRAP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """bootstrap_mean_ci of every column of `values` (seeds x points) at once, e.g. every epoch of a curve.

    The same resampled seeds serve every column, drawn exactly as bootstrap_mean_ci draws them, so column j equals
    bootstrap_mean_ci(values[:, j]) up to rounding; one draw instead of one per epoch keeps long curves cheap.
    """
    x = np.asarray(values, dtype=float)
    n, k = x.shape
    if n < 2:
        return np.full(k, np.nan), np.full(k, np.nan)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = (idx[:, :, None] == np.arange(n)).sum(axis=1)  # how often each seed is drawn, per resample
    means = counts @ x / n
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail], axis=0)
    return lo, hi


def bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) for two independent samples, each resampled on its own.

    Used against the full-data baseline, whose seeds need not match the strategy's.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    mb = b[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    return _percentile_interval(ma - mb)


def sign_flip_p(diffs: np.ndarray, seed: int = BOOTSTRAP_SEED) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of mean(diffs) == 0.

    Under the null each paired difference is as likely to have either sign. Exact for up to
    EXACT_SIGN_FLIP_MAX_N pairs (the observed pattern is one of the 2**n, so p >= 2 / 2**n: with
    fewer than 6 seeds no difference can reach p < 0.05).
    """
    d = np.asarray(diffs, dtype=float)
    if len(d) == 0:
        return float("nan")
    if len(d) <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(SIGN_FLIP_SAMPLES, len(d)))
        signs[0] = 1.0  # the observed pattern counts, so p is never 0
    null = np.abs((signs * d).mean(axis=1))
    observed = abs(d.mean())
    # a tolerance so that float noise in the observed pattern's own mean never excludes it
    return float(np.mean(null >= observed - 1e-12))


@dataclass(frozen=True)
class PairedComparison:
    n: int                 # seeds present in both groups
    mean_diff: float       # mean over seeds of (this - reference)
    ci_lo: float
    ci_hi: float
    p_value: float         # sign-flip permutation test

    @property
    def significant(self) -> bool:
        """p < ALPHA on the exact test; the bootstrap interval is reported but too narrow at few seeds."""
        return bool(self.p_value < ALPHA)


def paired_comparison(this: dict[int, float], reference: dict[int, float]) -> PairedComparison:
    """Compare two groups seed by seed ({seed: value}); only seeds present in both are paired."""
    seeds = sorted(this.keys() & reference.keys())
    d = np.array([this[s] - reference[s] for s in seeds], dtype=float)
    if len(d) == 0:
        return PairedComparison(0, float("nan"), float("nan"), float("nan"), float("nan"))
    lo, hi = bootstrap_mean_ci(d)
    return PairedComparison(len(d), float(d.mean()), lo, hi, sign_flip_p(d))


def pareto_mask(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (cost <= and accuracy >=, one of them strictly).

    NaN points are never on the frontier. A sweep over costs in increasing order: a point survives
    when it is the most accurate at its cost and beats every cheaper point. Exact duplicates both survive.
    """
    cost, accuracy = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    mask = np.zeros(len(cost), dtype=bool)
    ok = ~(np.isnan(cost) | np.isnan(accuracy))
    best_cheaper = -np.inf
    for c in np.unique(cost[ok]):
        group = np.flatnonzero(ok & (cost == c))
        top = accuracy[group].max()
        if top > best_cheaper:
            mask[group[accuracy[group] == top]] = True
        best_cheaper = max(best_cheaper, top)
    return mask
