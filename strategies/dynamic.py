"""Selection during training: stages that choose each epoch's samples, or each batch's backpropagated samples,
from what training already computed (the latest per-sample losses).

A dynamic stage is also a static stage whose `select` keeps every candidate; the harness trains on that pool and
calls `plan_epoch` at epoch boundaries (every `select_every` epochs) and, for per-batch methods, `filter_batch`
on each forwarded batch. A static selection is the special case "the same positions every epoch". Pure: arrays
in, positions and weights out; the generator is the harness's seeded stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from strategies.base import BaseStage, Selection, SelectionContext, SelectionError


@dataclass(frozen=True)
class LastLayer:
    """The current model's output layer (logits = feats @ weight.T + bias) and what it sees, from an eval-mode
    forward at the start of a selection round: each sample's last-layer cross-entropy gradient is
    err_i outer [feats_i, 1] (strategies/gradients.py), which CRAIG, GradMatch and GLISTER select from.

    feats:      float32[n, H], the pool samples' inputs to the output layer.
    err:        float32[n, C], softmax(logits) - onehot(label).
    weight:     float32[C, H]; bias: float32[C] (zeros when the layer has none).
    val_feats:  float32[m, H], the validation split's inputs to the output layer (None without `dataset.val_fraction`).
    val_labels: int64[m].
    """

    feats: np.ndarray
    err: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    val_feats: np.ndarray | None = None
    val_labels: np.ndarray | None = None


@dataclass(frozen=True)
class EpochContext:
    """What the training loop knows when an epoch starts.

    epoch:    1-based number of the epoch about to start.
    progress: fraction of the training budget (epochs, steps or samples seen) already spent, in [0, 1).
    losses:   float32[n], each pool sample's loss from its latest training forward pass; NaN = not seen yet.
    labels:   int64[n], the pool's labels.
    n_target: samples per epoch that `strategy.fraction` asks for (of the original training set), at most n.
    rng:      the stage's seeded generator, the same on every data-parallel rank.
    budget_unit, budget: the trial's training budget (`epochs`, `steps` or `samples`, and how many).
    batch_size: the trainer's batch size.
    last_layer: for a stage with `uses_last_layer`, a call that forwards the pool through the current model and
              returns its `LastLayer` (computed on the first call only, so a round that does not need it pays
              nothing; its time is the round's).
    """

    epoch: int
    progress: float
    losses: np.ndarray
    labels: np.ndarray
    n_target: int
    rng: np.random.Generator
    budget_unit: str = "epochs"
    budget: int = 1
    batch_size: int = 1
    last_layer: Callable[[], LastLayer] | None = None

    @property
    def n(self) -> int:
        return len(self.losses)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's samples: sorted positions into the pool, and a loss weight per position (None: all 1).

    The loop shuffles the positions into batches; a weight multiplies that sample's loss as given (no
    renormalisation: InfoBatch's 1/(1-r) keeps the expected gradient equal to the full data's), or, with
    `per_batch_mean`, each batch's loss is sum(w * loss) / sum(w) over the batch (CORDS's training loop, for the
    gradient-matching weights, whose scale is arbitrary). No positions: the epoch is skipped (no step)."""

    positions: np.ndarray
    weights: np.ndarray | None = None
    per_batch_mean: bool = False

    def __post_init__(self) -> None:
        pos = np.asarray(self.positions, dtype=np.int64)
        object.__setattr__(self, "positions", pos)
        if pos.ndim != 1 or (len(pos) > 1 and np.any(np.diff(pos) <= 0)):
            raise ValueError("EpochPlan.positions must be sorted, unique, 1-D")
        if self.weights is not None and len(self.weights) != len(pos):
            raise ValueError("EpochPlan.weights must have one entry per position")


@runtime_checkable
class DynamicStage(Protocol):
    """The training loop's side of a dynamic stage (`DynamicBase` has the defaults).

    uses_losses:  the loop records per-sample losses for `EpochContext.losses` (a scatter per step; off otherwise).
    uses_last_layer: the loop forwards the pool (and the validation split) through the current model before each
                  `plan_epoch` and passes `EpochContext.last_layer`; that forward is charged to selection.
    per_batch:    the loop calls `filter_batch` on each forwarded batch and backpropagates only what it keeps.
    select_every: epochs between two selection rounds.
    due(epoch, progress): whether the loop calls `plan_epoch` at the start of this epoch (always at epoch 1); in
                  between the last plan is reused. The default: every `select_every` epochs.
    """

    uses_losses: bool
    uses_last_layer: bool
    per_batch: bool
    select_every: int

    def due(self, epoch: int, progress: float) -> bool: ...

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan: ...

    def filter_batch(self, losses: np.ndarray, epoch: int, rng: np.random.Generator) -> np.ndarray: ...


class DynamicBase(BaseStage):
    """Defaults: statically keeps every candidate; trains on the whole pool every epoch, backpropagating all."""

    reaches_target = False
    keeps_all = True
    uses_losses = False
    uses_last_layer = False
    per_batch = False

    def __init__(self, select_every: int = 1) -> None:
        if isinstance(select_every, bool) or not isinstance(select_every, int) or select_every < 1:
            raise SelectionError(f"select_every={select_every}: expected an integer >= 1")
        self.select_every = select_every

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(np.sort(ctx.candidates))

    def due(self, epoch: int, progress: float) -> bool:  # noqa: ARG002 (a schedule may use progress)
        return (epoch - 1) % self.select_every == 0

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        return EpochPlan(np.arange(ctx.n))

    def filter_batch(self, losses: np.ndarray, epoch: int, rng: np.random.Generator) -> np.ndarray:
        return np.ones(len(losses), dtype=bool)


def is_dynamic(stage: object) -> bool:
    return isinstance(stage, DynamicStage)


def _in_range(key: str, value: float, hi: float) -> None:
    """`value` is a number in (0, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= hi:
        raise SelectionError(f"{key}={value}: expected a number in (0, {hi:g}]")


class RS2(DynamicBase):
    """Repeated Sampling of Random Subsets (Okanovic et al. 2023): each round a uniform random `n_target` of the
    pool. `replacement: false`, as the reference's `UniformNoReplacement`: one random permutation per pass of
    ceil(n / n_target) rounds, walked in consecutive chunks, the pass's last chunk wrapping round to the start of
    the same permutation, so every sample is visited at least once per pass (exactly once when n_target divides
    n). (The reference's wrap arithmetic, modulo n + 1, yields one short chunk when a pass ends one sample past
    n; here every round has n_target samples.) `replacement: true` draws each round independently."""

    reaches_target = True
    keeps_all = False

    def __init__(self, replacement: bool = False, select_every: int = 1) -> None:
        super().__init__(select_every)
        if not isinstance(replacement, bool):
            raise SelectionError(f"replacement={replacement}: expected true or false")
        self.replacement = replacement
        self._pass = np.empty(0, dtype=np.int64)  # without replacement: this pass's permutation
        self._round = 0  # rounds of this pass already drawn

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        k = min(ctx.n_target, ctx.n)
        if self.replacement:
            return EpochPlan(np.sort(ctx.rng.choice(ctx.n, size=k, replace=False)))
        if len(self._pass) != ctx.n or self._round * k >= ctx.n:  # a new pass
            self._pass, self._round = ctx.rng.permutation(ctx.n), 0
        take = self._pass[(self._round * k + np.arange(k)) % ctx.n]
        self._round += 1
        return EpochPlan(np.sort(take))


class InfoBatch(DynamicBase):
    """InfoBatch (Qin et al., ICLR 2024), as its reference code (NUS-HPC-AI-Lab/InfoBatch) does it.

    Each epoch, the samples whose latest loss is below the mean over the pool are "well learned"; a uniform
    floor(keep * count) of them is kept (keep = 1 - prune_ratio), each with loss weight 1/keep so the expected
    gradient equals the full data's (exactly when keep * count is whole; the floor, the reference's, biases it
    down by under one sample's share); the rest of the pool is kept with weight 1. Samples not seen yet count as not
    well learned, so the first epoch is full (the reference starts every score at 3). While `progress` exceeds
    `delta` (annealing: the last 1 - delta of the budget) every sample is used with weight 1.
    """

    uses_losses = True

    def __init__(self, prune_ratio: float = 0.5, delta: float = 0.875, select_every: int = 1) -> None:
        super().__init__(select_every)
        # The reference keeps at least 10% of the well-learned samples (keep_ratio >= 0.1).
        _in_range("prune_ratio", prune_ratio, 0.9)
        _in_range("delta", delta, 1.0)
        self.prune_ratio, self.delta = float(prune_ratio), float(delta)

    def plan_epoch(self, ctx: EpochContext) -> EpochPlan:
        everything = EpochPlan(np.arange(ctx.n))
        if ctx.progress > self.delta:
            return everything
        seen = ~np.isnan(ctx.losses)
        if not seen.any():
            return everything
        # the reference's mean includes its initial score (3) for unseen samples; after epoch 1 every sample is seen
        scores = np.where(seen, ctx.losses, 3.0)
        well_learned = np.flatnonzero(scores < scores.mean())
        keep = 1.0 - self.prune_ratio
        kept = ctx.rng.choice(well_learned, size=int(keep * len(well_learned)), replace=False)
        weights = np.ones(ctx.n, dtype=np.float32)
        weights[kept] = 1.0 / keep
        mask = np.ones(ctx.n, dtype=bool)
        mask[well_learned] = False
        mask[kept] = True
        positions = np.flatnonzero(mask)
        return EpochPlan(positions, weights[positions])


class SelectiveBackprop(DynamicBase):
    """Selective-Backprop (Jiang et al. 2019), as its reference code (angelajiang/SelectiveBackprop) does it.

    Every sample of an epoch is forwarded; each is backpropagated with probability P = percentile^beta, the
    percentile being the share of the last `history` losses (this batch's included) strictly below its loss. The
    first epoch backpropagates everything and leaves the history empty (the reference "primes" on one epoch).
    Kept samples queue up; the loop backpropagates each full batch of them, unweighted (the reference's
    `SamplingBackpropper`), and what is left at the end of an epoch as one smaller batch (the reference's final
    batch). Defaults: beta 3 and history 1024, the reference's.
    """

    per_batch = True

    def __init__(self, beta: float = 3.0, history: int = 1024) -> None:
        super().__init__(select_every=1)  # it filters every batch; there is no epoch plan to reuse
        if isinstance(beta, bool) or not isinstance(beta, int | float) or beta <= 0:
            raise SelectionError(f"beta={beta}: expected a positive number")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise SelectionError(f"history={history}: expected an integer >= 1")
        self.beta, self.history = float(beta), history
        self._ring = np.empty(history, dtype=np.float64)  # the last `history` losses, oldest overwritten first
        self._seen = 0  # losses ever added (the ring holds the last min(_seen, history) of them)

    def keep_probability(self, losses: np.ndarray) -> np.ndarray:
        """P of each loss after the batch joined the history (the reference updates first, then scores)."""
        losses = np.asarray(losses, dtype=np.float64)
        tail = losses[-self.history:]  # a batch longer than the history keeps only its last losses
        slots = (self._seen + len(losses) - len(tail) + np.arange(len(tail))) % self.history
        self._ring[slots] = tail
        self._seen += len(losses)
        past = np.sort(self._ring[: min(self._seen, self.history)])
        below = np.searchsorted(past, losses, side="left")
        return (below / len(past)) ** self.beta

    def filter_batch(self, losses: np.ndarray, epoch: int, rng: np.random.Generator) -> np.ndarray:
        if epoch == 1:  # priming
            return np.ones(len(losses), dtype=bool)
        return rng.random(len(losses)) < self.keep_probability(losses)
