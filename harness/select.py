"""Run the trial's strategy: compute the signals it needs, select, record what each stage did.

The strategy is built and checked once per trial by `harness.config.validate` (harness/build.py).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from harness.data import Dataset
from harness.errors import UserError
from harness.seeding import numpy_rng
from harness.signals import FILE_SIGNAL
from harness.signals.compute import compute_signals, signals_lock
from harness.signals.embeddings_file import load_embeddings
from strategies.base import Selection, SelectionContext, SelectionError, Stage
from strategies.pipeline import Pipeline

if TYPE_CHECKING:
    import torch

    from harness.meters import Meter
    from harness.tracking import TrialRun


def select(stage: Stage, strategy_cfg: DictConfig, data: Dataset, seed: int, signals: dict | None = None,
           observe=None) -> Selection:
    """Run `stage` over the whole training set with the configured target fraction."""
    signals = signals or {}
    missing = sorted(stage.needs - signals.keys())
    if missing:
        raise UserError(f"strategy={strategy_cfg.get('name', strategy_cfg._target_)} needs signals "
                        f"{', '.join(missing)}, which no probe provides")
    ctx = SelectionContext(
        candidates=np.arange(len(data.y_train), dtype=np.int64),
        labels=data.y_train,
        num_classes=data.num_classes,
        fraction=float(strategy_cfg.get("fraction", 1.0)),
        rng=numpy_rng(seed, "selection"),
        signals=signals,
    )
    try:
        selection = stage.select(ctx, observe) if isinstance(stage, Pipeline) else stage.select(ctx)
    except SelectionError as e:
        raise UserError(f"strategy: {e}") from None
    if len(selection.indices) == 0:
        raise UserError("strategy: the selection is empty; expected at least one sample")
    if selection.indices.min() < 0 or selection.indices.max() >= len(data.y_train):
        raise ValueError(f"{type(stage).__name__} returned indices outside the training set")
    return selection


def run_selection(cfg: DictConfig, stage: Pipeline, data: Dataset, device: torch.device, meter: Meter,
                  run: TrialRun) -> Selection:
    """The trial's selection step: compute the signals `stage` needs, select, record.

    Signal computation (probe training or its cache read; an embeddings file's read) is metered as `probe`, the
    stages as `selection`; both count in the trial's total. Tags: `embedding` (what the embedding stages selected
    on: the probe's `embeddings`, `raw`, `projection` or `file`) and, for `file`, `embeddings_fingerprint` (the
    file's dtype, shape and values). Per stage: `stage<i>_<name>_removed`, `..._s` and what it reports (eps).
    """
    signals: dict[str, np.ndarray] = {}
    if stage.needs:
        emb = None
        # the lock spans the probe and the booking of its cost, so a trial waiting on it finds both
        with signals_lock(stage.needs, cfg, data, device):
            with meter.stage("probe"):
                signals, probe = compute_signals(stage.needs, cfg, data, device)
                if FILE_SIGNAL in stage.needs:  # embeddings computed elsewhere: reading the file is this stage's cost
                    emb = load_embeddings(cfg.embeddings.path, data)
                    signals[FILE_SIGNAL] = emb.rows
            if probe is not None:
                probe.charge(meter)
        embedding = sorted({e for s in stage.stages if isinstance(e := getattr(s, "embedding", None), str)})
        if embedding:
            run.tags({"embedding": ",".join(embedding)})
        if emb is not None:
            run.tags({"embeddings_fingerprint": emb.fingerprint})
        if probe is not None:
            run.tags({"cache_hit": probe.cache_hit})
            run.metrics(probe.metrics())

    stage_s: list[float] = []

    @contextmanager
    def observe(_name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            stage_s.append(time.perf_counter() - start)

    with meter.stage("selection"):
        selection = select(stage, cfg.strategy, data, cfg.seed, signals, observe)
    metrics: dict[str, float] = {}
    for i, (rep, seconds) in enumerate(zip(stage.reports, stage_s), 1):
        prefix = f"stage{i}_{rep.name}"
        metrics[f"{prefix}_removed"] = rep.removed
        metrics[f"{prefix}_s"] = seconds
        metrics.update({f"{prefix}_{k}": float(v) for k, v in rep.info.items()})
    run.metrics(metrics)
    run.tags({"selected_indices_sha256": hashlib.sha256(selection.indices.tobytes()).hexdigest()[:16]})
    run.artifact_array("selected_indices.npy", selection.indices)
    if selection.weights is not None:  # coreset weights (CRAIG, GradMatch): harness.export writes them with the indices
        run.artifact_array("selected_weights.npy", np.asarray(selection.weights, dtype=np.float64))
    return selection
