"""Everything built from config, in one place: dataset sources, models and strategies (`hydra.utils.instantiate`).

Each builder turns a failure a user can cause into a one-line `UserError` naming the key. This module imports
no torch at module level: the preflight builds the strategy with it before any compute.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from harness.errors import UserError, first_line
from harness.signals import ALL_SIGNALS
from strategies.base import SelectionError, Stage
from strategies.pipeline import Pipeline

if TYPE_CHECKING:
    import torch

STRATEGY_DIR = Path(__file__).resolve().parent.parent / "conf" / "strategy"
# Labels in group configs that are not constructor arguments.
LABEL_KEYS = ("name", "fraction")


def constructor_args(node: DictConfig) -> DictConfig:
    """A group config without its label keys, ready for `hydra.utils.instantiate`."""
    d = OmegaConf.to_container(node, resolve=True)
    for k in LABEL_KEYS:
        d.pop(k, None)
    return OmegaConf.create(d)


def build_dataset(cfg: DictConfig) -> Any:
    """The configured dataset source (not loaded: `check()`, `prepare()`, `load()` are the caller's)."""
    try:
        return instantiate(constructor_args(cfg.dataset))
    except Exception as e:
        raise UserError(f"dataset: cannot build {cfg.dataset._target_} ({first_line(e.__cause__ or e)})") from None


def build_model(model_cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """Instantiate the model, filling `input_shape`/`num_classes` from the data when the target takes them."""
    args = constructor_args(model_cfg)
    accepted = inspect.signature(get_method(args._target_)).parameters
    extra: dict[str, Any] = {}
    if "input_shape" in accepted and "input_shape" not in args:
        extra["input_shape"] = tuple(input_shape)
    if "num_classes" in accepted and "num_classes" not in args:
        extra["num_classes"] = num_classes
    return instantiate(args, **extra)


def _build_one(node: DictConfig, key: str) -> Stage:
    try:
        stage = instantiate(constructor_args(node))
    except Exception as e:
        cause = e.__cause__ or e
        if isinstance(cause, SelectionError):  # the strategy's own check of an argument: "eps=1.5: expected ..."
            raise UserError(f"{key}.{first_line(cause)}") from None
        raise UserError(f"{key}: cannot build {node._target_} ({first_line(cause)})") from None
    if not isinstance(stage, Stage):
        raise UserError(f"{key}._target_={node._target_}: expected a stage with `needs` and `select()`")
    return stage


def strategy_options() -> list[str]:
    """The conf/strategy names a pipeline entry may use."""
    return sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml") if p.stem != "pipeline")


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
        raise UserError(f"strategy.pipeline[{i}]={name}: no such strategy; expected one of: "
                        f"{', '.join(strategy_options())}")
    return name, OmegaConf.merge(OmegaConf.load(path), overrides)


def build_strategy(cfg: DictConfig) -> Pipeline:
    """The trial's strategy as a Pipeline (its `pipeline` list, or the one configured stage), checked before
    compute: constructor arguments, the signals it needs, and whether it can reach `strategy.fraction`."""
    strategy_cfg = cfg.strategy
    if strategy_cfg.get("pipeline"):
        names, stages = [], []
        for i, entry in enumerate(strategy_cfg.pipeline):
            name, node = _stage_config(entry, i)
            names.append(name)
            stages.append(_build_one(node, f"strategy.pipeline[{i}]={name}: strategy"))
        pipeline = Pipeline(stages, names)
    else:
        pipeline = Pipeline([_build_one(strategy_cfg, "strategy")], [str(strategy_cfg.get("name", "stage"))])
    label = strategy_cfg.get("name", strategy_cfg._target_)
    unknown = sorted(pipeline.needs - set(ALL_SIGNALS))
    if unknown:
        raise UserError(f"strategy={label} needs signal {unknown[0]}, which no probe provides; expected one of: "
                        f"{', '.join(ALL_SIGNALS)}")
    fraction = strategy_cfg.get("fraction", 1.0)
    if fraction < 1 and not pipeline.reaches_target:
        raise UserError(f"strategy.fraction={fraction}: no stage of {label} ({', '.join(pipeline.names)}) cuts to "
                        "a target fraction; expected strategy.fraction=1, a coreset stage, or dedup with eps: null")
    return pipeline
