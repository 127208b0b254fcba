"""Build the configured strategy and run it: the harness side of `strategies/`."""

from __future__ import annotations

import hashlib

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from harness.config import constructor_args
from harness.data import Dataset
from harness.errors import UserError
from harness.meters import Meter
from harness.seeding import numpy_rng
from harness.tracking import TrialRun
from strategies.base import Selection, SelectionContext, SelectionError, Stage


def build_stage(strategy_cfg: DictConfig) -> Stage:
    try:
        stage = instantiate(constructor_args(strategy_cfg))
    except Exception as e:
        cause = e.__cause__ or e
        raise UserError(f"strategy: cannot build {strategy_cfg._target_} ({str(cause).splitlines()[0]})") from None
    if not isinstance(stage, Stage):
        raise UserError(f"strategy._target_={strategy_cfg._target_}: expected a stage with `needs` and `select()`")
    return stage


def select(stage: Stage, strategy_cfg: DictConfig, data: Dataset, seed: int,
           signals: dict | None = None) -> Selection:
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
        selection = stage.select(ctx)
    except SelectionError as e:
        raise UserError(f"strategy: {e}") from None
    if len(selection.indices) == 0:
        raise UserError("strategy: the selection is empty; expected at least one sample")
    if selection.indices.min() < 0 or selection.indices.max() >= len(data.y_train):
        raise ValueError(f"{type(stage).__name__} returned indices outside the training set")
    return selection


def run_selection(cfg: DictConfig, data: Dataset, meter: Meter, run: TrialRun) -> Selection:
    """The trial's selection step: build the strategy, compute what it needs, select, record.

    Every second spent here is metered as selection cost (stage `selection`).
    """
    stage = build_stage(cfg.strategy)
    with meter.stage("selection"):
        selection = select(stage, cfg.strategy, data, cfg.seed)
    run.tags({"selected_indices_sha256": hashlib.sha256(selection.indices.tobytes()).hexdigest()[:16]})
    run.artifact_array("selected_indices.npy", selection.indices)
    return selection
