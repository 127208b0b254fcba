"""How long and how often the probe trains for a set of signals: a `ProbePlan`, from the config alone.

Import-light (no torch): the preflight and the cache key use it before any compute.

- Length L: `probe.epochs`, or (null) the trial's own budget in epochs over the training set, so "early" means
  early relative to the training the selection is for (Paul et al. score EL2N at epoch 20 of 200).
- Early scores at round(score_at * L) epochs, GraNd over all parameters at round(grand_at * L); 0 is at
  initialisation. A probe asked only for early scores stops training at the latest of them, its lr schedule still
  L epochs long (what training to epoch 20 of a 200-epoch run is). Any other signal needs all L epochs.
- Runs: `probe.runs`, or (null) the papers' counts: 10 for early scores alone (Paul et al. average EL2N and GraNd
  over 10 initialisations), 1 otherwise (one training run: Toneva et al.'s forgetting, Coleman et al.'s proxy; early
  embeddings alone, which come from run 0).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.signals import EARLY_SIGNALS, PROBE_SIGNALS

PAPER_RUNS_EARLY = 10  # Paul et al. 2021: scores averaged over 10 independent initialisations
PER_EPOCH_SIGNALS = ("losses", "loss")  # a forward of every training sample after every epoch


@dataclass(frozen=True)
class ProbePlan:
    epochs: int  # L: the probe's schedule, in epochs over the rows it trains on
    runs: int  # independent runs (own initialisation and data order), averaged
    score_epoch: int  # EL2N, last-layer GraNd and early embeddings (0: at initialisation)
    grand_epoch: int  # GraNd over all parameters (0: at initialisation)
    stop_epoch: int  # epochs trained per run
    subset: float  # fraction of the training set the probe trains on
    per_epoch: bool  # forward every sample after every epoch (per-epoch losses; forgetting outside the subset)
    full_grand: bool  # per-sample gradients over all parameters (GraNd)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def trained_epochs(self) -> float:
        """Epochs of the full training set that the probe trains, over all runs: its cost in trainings x L."""
        return self.runs * self.stop_epoch * self.subset


def budget_epochs(trainer: Any, n_train: int) -> int:
    """The trial's budget as epochs over `n_train` samples (steps and samples budgets rounded up)."""
    if trainer.epochs is not None:
        return int(trainer.epochs)
    if trainer.steps is not None:
        return math.ceil(trainer.steps * trainer.batch_size / n_train)
    return math.ceil(trainer.samples / n_train)


def epoch_at(fraction: float, epochs: int) -> int:
    """The epoch at `fraction` of `epochs`, rounded half up; 0 only for 0 (at initialisation), else at least 1."""
    if fraction == 0:
        return 0
    return max(1, min(epochs, math.floor(fraction * epochs + 0.5)))


def plan_probe(probe: Any, trainer: Any, needs: frozenset[str] | set[str], n_train: int) -> ProbePlan:
    """The probe that computes the probe signals in `needs` for a trial training `n_train` samples."""
    wanted = set(needs) & set(PROBE_SIGNALS)
    if not wanted:
        raise ValueError(f"no probe signal in {sorted(needs)}")
    length = int(probe.epochs) if probe.epochs is not None else budget_epochs(trainer, n_train)
    early_only = wanted <= set(EARLY_SIGNALS)
    averaged = wanted & set(EARLY_SIGNALS) - {"embeddings_early"}  # embeddings come from run 0 alone
    runs = int(probe.runs) if probe.runs is not None else (PAPER_RUNS_EARLY if early_only and averaged else 1)
    score, grand = epoch_at(probe.score_at, length), epoch_at(probe.grand_at, length)
    if early_only:
        stop = max(grand if s == "grand" else score for s in wanted)
    else:
        stop = length
    subset = float(probe.subset)
    per_epoch = bool(wanted & set(PER_EPOCH_SIGNALS)) or ("forgetting" in wanted and subset < 1)
    return ProbePlan(length, runs, score, grand, stop, subset, per_epoch, "grand" in wanted)
