"""Everything built from config, in one place: dataset sources, models and strategies (`hydra.utils.instantiate`).

Each builder turns a failure a user can cause into a one-line `UserError` naming the key. This module imports
no torch at module level: the preflight builds the strategy with it before any compute.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from harness.errors import UserError, first_line
from harness.signals import ALL_SIGNALS
from strategies.base import SelectionError, Stage
from strategies.curriculum import Curriculum
from strategies.dynamic import is_dynamic
from strategies.pipeline import Pipeline

if TYPE_CHECKING:
    import torch

STRATEGY_DIR = Path(__file__).resolve().parent.parent / "conf" / "strategy"
# Labels in group configs that are not constructor arguments (val_fraction: the harness splits any source's data).
LABEL_KEYS = ("name", "fraction", "val_fraction")


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


def build_optimizer(trainer_cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    """`trainer.optimizer` (a partial taking the parameters) over `params`."""
    return instantiate(trainer_cfg.optimizer)(params)


def build_scheduler(trainer_cfg: DictConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """`trainer.scheduler` (a partial taking the optimizer and `total_steps`), or None when none is configured."""
    if trainer_cfg.scheduler is None:
        return None
    return instantiate(trainer_cfg.scheduler)(optimizer, total_steps=total_steps)


# Model configs already checked against a sample shape in this process: the trial repeats the preflight's checks.
_FITTED: set[str] = set()


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def check_model_fits(model_cfg: DictConfig, key: str, dataset: str, sample_shape: tuple[int, ...],
                     num_classes: int | None, output_linear: bool = False) -> None:
    """Build the model on the CPU and run one forward of a zeros batch of 2 samples, so a model that cannot take the
    dataset's samples stops with one line before any compute, not with torch's traceback minutes in.

    `key` names the model's config key (model, probe.model), `dataset` the dataset; `num_classes` None: unknown,
    the output's width is not checked. `output_linear`: the output must come from a torch.nn.Linear (the
    gradient-matching strategies use its closed-form gradient). Raises UserError.
    """
    import torch

    memo = json.dumps([OmegaConf.to_container(model_cfg, resolve=True), list(sample_shape), num_classes,
                       output_linear], sort_keys=True, default=str)
    if memo in _FITTED:
        return
    label = f"{key}={model_cfg.get('name', model_cfg._target_)}"
    # The trial seeds its own initialisation, but nothing here may move the global random stream it draws from.
    with torch.random.fork_rng(devices=[]):
        try:
            model = build_model(model_cfg, sample_shape, num_classes or 2)
        except Exception as e:
            raise UserError(f"{key}: cannot build {model_cfg._target_} for samples of shape {_shape(sample_shape)} "
                            f"({first_line(e.__cause__ or e)})") from None
        if not isinstance(model, torch.nn.Module):
            raise UserError(f"{key}._target_={model_cfg._target_}: expected a torch.nn.Module, got "
                            f"{type(model).__name__}")
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros((2, *sample_shape)))
        except Exception as e:
            raise UserError(f"{label} does not fit dataset={dataset}: the model expects another input than samples "
                            f"of shape {_shape(sample_shape)} ({first_line(e)})") from None
        if output_linear:
            from harness.last_layer import output_layer

            output_layer(model, torch.zeros((2, *sample_shape)))
    if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != 2:
        what = f"shape {_shape(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise UserError(f"{label} returns {what} for a batch of 2 samples of dataset={dataset}; expected one row "
                        "of class scores per sample")
    if num_classes is not None and tuple(out.shape[1:]) != (num_classes,):
        per_sample = f"{out.shape[1]} values" if out.ndim == 2 else f"shape {_shape(out.shape[1:])}"
        raise UserError(f"{label} outputs {per_sample} per sample; dataset={dataset} has {num_classes} classes")
    _FITTED.add(memo)


def _build_one(node: DictConfig, key: str) -> Stage:
    try:
        stage = instantiate(constructor_args(node))
    except Exception as e:
        cause = e.__cause__ or e
        if isinstance(cause, SelectionError):  # the strategy's own check of an argument: "eps=1.5: expected ..."
            raise UserError(f"{key}.{first_line(cause)}") from None
        raise UserError(f"{key}: cannot build {node._target_} ({first_line(cause)})") from None
    if not isinstance(stage, Stage):
        raise UserError(f"{key}._target_={node._target_}: expected a stage (a subclass of strategies.base.BaseStage, "
                        "or a class with needs, reaches_target, keeps_all, info, identity_args and select())")
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


def _check_dynamic_last(pipeline: Pipeline) -> None:
    """A dynamic stage selects during training from the pool the static stages leave: it must come last, alone,
    and not after a curriculum (whose order it would not follow)."""
    dynamic = [i for i, s in enumerate(pipeline.stages) if is_dynamic(s)]
    if not dynamic:
        return
    i, name = dynamic[0], pipeline.names[dynamic[0]]
    if len(dynamic) > 1:
        raise UserError(f"strategy.pipeline[{dynamic[1]}]={pipeline.names[dynamic[1]]}: a second dynamic stage "
                        f"after {name}; expected at most one, last")
    if i != len(pipeline.stages) - 1:
        nxt = pipeline.names[i + 1]
        raise UserError(f"strategy.pipeline[{i}]={name}: a dynamic stage selects during training and must come "
                        f"last; expected the static stage {nxt} before it")
    curricula = [n for s, n in zip(pipeline.stages, pipeline.names) if isinstance(s, Curriculum)]
    if curricula:
        raise UserError(f"strategy.pipeline[{i}]={name}: a dynamic stage cannot follow the curriculum "
                        f"{curricula[0]} (it would not follow its order); expected static stages without an order")


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
    _check_dynamic_last(pipeline)
    unknown = sorted(pipeline.needs - set(ALL_SIGNALS))
    if unknown:
        raise UserError(f"strategy={label} needs signal {unknown[0]}, which no probe provides; expected one of: "
                        f"{', '.join(ALL_SIGNALS)}")
    fraction = strategy_cfg.get("fraction", 1.0)
    keeps_all = len(pipeline.stages) == 1 and pipeline.stages[0].keeps_all  # full, infobatch: runs at fraction 1
    if fraction < 1 and not pipeline.reaches_target and not keeps_all:
        raise UserError(f"strategy.fraction={fraction}: no stage of {label} ({', '.join(pipeline.names)}) cuts to "
                        "a target fraction; expected strategy.fraction=1, a coreset stage, or dedup with eps: null")
    return pipeline
