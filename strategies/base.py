"""The selection interface every strategy implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import numpy as np

# g(t) -> fraction of the curriculum order available at training progress t in [0, 1].
Pacing = Callable[[float], float]


class SelectionError(ValueError):
    """A strategy cannot do what it was asked (bad argument, unreachable target): a user error."""


@dataclass(frozen=True)
class Selection:
    """What a strategy hands the trainer.

    indices: positions in the original training set, int64, unique.
    weights: one per entry of `indices` (coreset weights), or None for uniform.
    order:   a permutation of range(len(indices)), easy -> hard, or None for random order.
    pacing:  g(t) giving the fraction of `order` available at progress t, or None.
    """

    indices: np.ndarray
    weights: np.ndarray | None = None
    order: np.ndarray | None = None
    pacing: Pacing | None = None

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices, dtype=np.int64)
        object.__setattr__(self, "indices", idx)
        if idx.ndim != 1 or len(np.unique(idx)) != len(idx):
            raise ValueError("Selection.indices must be a 1-D array of unique positions")
        if self.weights is not None and len(self.weights) != len(idx):
            raise ValueError("Selection.weights must have one entry per selected index")
        if self.order is not None and not np.array_equal(np.sort(self.order), np.arange(len(idx))):
            raise ValueError("Selection.order must be a permutation of range(len(indices))")


@dataclass
class SelectionContext:
    """Everything a stage may read.

    candidates: positions (into the original training set) still in play.
    labels:     labels of the whole original training set.
    signals:    per-sample arrays over the whole original training set, by name ("embeddings", "el2n", ...).
    fraction:   target size relative to the *original* training set.
    rng:        the stage's seeded generator; the only source of randomness.
    """

    candidates: np.ndarray
    labels: np.ndarray
    num_classes: int
    fraction: float
    rng: np.random.Generator
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_total(self) -> int:
        return len(self.labels)

    @property
    def n_target(self) -> int:
        """Number of samples the final selection should hold (at least one)."""
        return max(1, int(round(self.fraction * self.n_total)))

    def with_candidates(self, candidates: np.ndarray) -> SelectionContext:
        return SelectionContext(candidates, self.labels, self.num_classes, self.fraction, self.rng, self.signals)


@runtime_checkable
class Stage(Protocol):
    """One step of a selection pipeline: the whole contract the harness relies on (`BaseStage` has the defaults).

    needs:          signals `select` reads from `ctx.signals` ("embeddings", "el2n", ...); the harness computes them.
    reaches_target: True when the stage cuts to `ctx.fraction` (coresets); False when it removes by its own rule
                    (dedup with a fixed eps) or keeps everything (curricula). A fraction < 1 needs one such stage.
    keeps_all:      True when the stage keeps every candidate whatever the fraction (full data): a sweep over
                    fractions then runs it once, as one trial with effective fraction 1.
    info:           numbers the stage found while selecting (e.g. the eps a dedup stage settled on), logged per stage.
    identity_args:  maps the stage's config arguments to those that change what it does (config_hash keys on them).
    """

    needs: frozenset[str]
    reaches_target: bool
    keeps_all: bool
    info: Mapping[str, float]

    @staticmethod
    def identity_args(args: dict) -> dict: ...

    def select(self, ctx: SelectionContext) -> Selection: ...


class BaseStage:
    """Defaults of the `Stage` contract; a strategy class overrides only what differs."""

    needs: frozenset[str] = frozenset()
    reaches_target: bool = True
    keeps_all: bool = False
    info: Mapping[str, float] = MappingProxyType({})  # read-only default; stages that report assign their own

    @staticmethod
    def identity_args(args: dict) -> dict:
        return args

    def select(self, ctx: SelectionContext) -> Selection:
        raise NotImplementedError


def class_quota(labels: np.ndarray, k: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """How many samples to take from each class for a class-balanced selection of k.

    Water-filling: every class gets min(its size, L) for the highest level L that fits in k; the few
    left over go one each to randomly chosen classes that still have members, so no class is favoured
    by its id.
    """
    counts = np.bincount(labels, minlength=num_classes)
    k = min(k, int(counts.sum()))
    lo, hi = 0, int(counts.max())  # largest L with sum(min(counts, L)) <= k, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if np.minimum(counts, mid).sum() <= k:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(counts, lo).astype(np.int64)
    extra = k - int(quota.sum())
    quota[rng.choice(np.flatnonzero(counts > lo), size=extra, replace=False)] += 1
    return quota


def pick_balanced(ctx: SelectionContext, k: int, class_balance: bool,
                  pick: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Choose k of the candidates with `pick`, over all of them or class by class (quotas from `class_quota`).

    pick(pos, q) gets positions into `ctx.candidates` (all, or one class's) and returns q of them.
    Returns sorted indices into the original training set.
    """
    cand = ctx.candidates
    k = min(k, len(cand))
    if not class_balance:
        return np.sort(cand[pick(np.arange(len(cand)), k)])
    labels = ctx.labels[cand]
    quota = class_quota(labels, k, ctx.num_classes, ctx.rng)
    parts = [cand[pick(np.flatnonzero(labels == c), int(q))] for c, q in enumerate(quota) if q]
    return np.sort(np.concatenate(parts))


def rows(signal: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """signal[candidates] without a copy when the candidates are the whole set (1M x 384 is 1.5 GB)."""
    signal = np.asarray(signal)
    n = len(signal)
    if len(candidates) == n and (n == 0 or (candidates[0] == 0 and candidates[-1] == n - 1)):
        return signal  # candidates are sorted and unique, so this is arange(n)
    return signal[candidates]


def check_choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise SelectionError(f"{key}={value}: expected one of {', '.join(options)}")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (zero rows stay zero). Returns `x` itself when already unit-norm."""
    x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    norms = row_norms(x)[:, None]
    if np.allclose(norms, 1.0, atol=1e-5):
        return x
    return x / np.maximum(norms, 1e-12)


def row_norms(x: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """L2 norm of each row, in chunks: np.linalg.norm(x, axis=1) would allocate a temporary the size of x."""
    out = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), chunk_rows):
        c = x[s : s + chunk_rows]
        out[s : s + chunk_rows] = np.sqrt(np.einsum("ij,ij->i", c, c))
    return out
