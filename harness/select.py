"""Build the configured strategy (one stage or a pipeline of them), compute the signals it needs, run it.

`check_strategy` runs in `validate` (so in the preflight, before any compute); it imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from harness.config import constructor_args
from harness.data import Dataset
from harness.errors import UserError
from strategies.base import Selection, SelectionContext, SelectionError, Stage
from strategies.pipeline import Pipeline

if TYPE_CHECKING:
    from harness.meters import Meter
    from harness.tracking import TrialRun

STRATEGY_DIR = Path(__file__).resolve().parent.parent / "conf" / "strategy"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _build_one(node: DictConfig, key: str) -> Stage:
    try:
        stage = instantiate(constructor_args(node))
    except Exception as e:
        cause = e.__cause__ or e
        if isinstance(cause, SelectionError):  # the strategy's own check of an argument: "eps=1.5: expected ..."
            raise UserError(f"{key}.{_first_line(cause)}") from None
        raise UserError(f"{key}: cannot build {node._target_} ({_first_line(cause)})") from None
    if not isinstance(stage, Stage):
        raise UserError(f"{key}._target_={node._target_}: expected a stage with `needs` and `select()`")
    return stage


def _stage_config(entry: object, i: int) -> tuple[str, DictConfig]:
    """A pipeline entry: a conf/strategy name, or a mapping {name: ..., <argument overrides>}."""
    overrides: dict = {}
    if isinstance(entry, DictConfig) and "name" in entry:
        overrides = OmegaConf.to_container(entry, resolve=True)
        name = str(overrides.pop("name"))
    elif isinstance(entry, str):
        name = entry
    else:
        raise UserError(f"strategy.pipeline[{i}]={entry}: expected a strategy name or a mapping with `name`")
    path = STRATEGY_DIR / f"{name}.yaml"
    if name == "pipeline" or not path.is_file():
        options = sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml") if p.stem != "pipeline")
        raise UserError(f"strategy.pipeline[{i}]={name}: no such strategy; expected one of: {', '.join(options)}")
    return name, OmegaConf.merge(OmegaConf.load(path), overrides)


def build_stage(strategy_cfg: DictConfig) -> Pipeline:
    """The strategy as a Pipeline: its `pipeline` list of stages, or the single configured stage."""
    if strategy_cfg.get("pipeline"):
        names, stages = [], []
        for i, entry in enumerate(strategy_cfg.pipeline):
            name, node = _stage_config(entry, i)
            names.append(name)
            stages.append(_build_one(node, f"strategy.pipeline[{i}]={name}: strategy"))
        return Pipeline(stages, names)
    return Pipeline([_build_one(strategy_cfg, "strategy")], [str(strategy_cfg.get("name", "stage"))])


def check_strategy(cfg: DictConfig) -> Pipeline:
    """Everything about the strategy that can be checked before compute: arguments, signals, reachability."""
    from harness.signals import ALL_SIGNALS

    stage = build_stage(cfg.strategy)
    label = cfg.strategy.get("name", cfg.strategy._target_)
    unknown = sorted(stage.needs - set(ALL_SIGNALS))
    if unknown:
        raise UserError(f"strategy={label} needs signal {unknown[0]}, which no probe provides; expected one of: "
                        f"{', '.join(ALL_SIGNALS)}")
    fraction = cfg.strategy.get("fraction", 1.0)
    if fraction < 1 and not stage.reaches_target:
        raise UserError(f"strategy.fraction={fraction}: no stage of {label} ({', '.join(stage.names)}) cuts to a "
                        "target fraction; expected strategy.fraction=1, a coreset stage, or dedup with eps: null")
    return stage


def select(stage: Stage, strategy_cfg: DictConfig, data: Dataset, seed: int, signals: dict | None = None,
           observe=None) -> Selection:
    """Run `stage` over the whole training set with the configured target fraction."""
    from harness.seeding import numpy_rng  # imports torch: not at module level (the preflight imports this module)

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


def charge_probe(meter: Meter, cache_path: Path, cache_hit: bool, probe_train_s: float) -> None:
    """Never hide the probe's cost: a run that reads cached signals is charged the probe's original time and
    energy as stage `probe_cached` (so `total_s`/`total_energy_j` are what the strategy costs on its own).
    The run that trains the probe records its cost beside the cache entry for the runs after it.
    """
    cost_path = cache_path.with_suffix(".cost.json")
    if not cache_hit:
        tmp = cost_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"probe_s": meter.seconds.get("probe", 0.0),
                                   "probe_energy_j": meter.stage_energy_j("probe")}))
        os.replace(tmp, cost_path)  # atomic: concurrent trials never read half a file
    elif cost_path.exists():
        cost = json.loads(cost_path.read_text())
        meter.charge("probe_cached", cost["probe_s"], cost["probe_energy_j"])
    else:  # a cache written before costs were recorded beside it: its training time is all that is known
        meter.charge("probe_cached", probe_train_s, {})


def run_selection(cfg: DictConfig, data: Dataset, meter: Meter, run: TrialRun) -> Selection:
    """The trial's selection step: build the strategy, compute the signals it needs, select, record.

    Signal computation (probe training or its cache read) is metered as `probe`, the stages as `selection`;
    both count in the trial's total. Per stage: `stage<i>_<name>_removed`, `..._s` and what it reports (eps).
    """
    stage = check_strategy(cfg)
    signals: dict[str, np.ndarray] = {}
    if stage.needs:
        from harness.signals import compute_signals
        from harness.train import resolve_device

        with meter.stage("probe"):
            signals, info = compute_signals(stage.needs, cfg, data, resolve_device(cfg.trainer.device))
        if "cache_hit" in info:
            charge_probe(meter, Path(info.pop("cache_path")), bool(info["cache_hit"]), info["probe_train_s"])
            run.tags({"cache_hit": bool(info["cache_hit"])})
        run.metrics(info)

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
    return selection
