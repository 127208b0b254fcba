"""Config schema (Hydra structured configs) and the semantic checks that run before any compute.

Types are checked by Hydra at compose time from the dataclasses below; `validate` checks values
(ranges, files, importable targets) and raises `UserError` with one line naming the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_method
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from harness.augment import check_augment
from harness.build import build_dataset, build_optimizer, build_scheduler, build_strategy, check_model_fits
from harness.data.corrupt import check_corruption, rows_changed_by
from harness.data.validation import check_val_fraction
from harness.errors import UserError, first_line
from harness.signals import FILE_SIGNAL, IN_MEMORY_SIGNALS, PROBE_SIGNALS, rows_in_file_message
from harness.signals.embeddings_file import check_embeddings_file
from harness.train import BUDGET_UNITS
from strategies.coresets import prototypes_label
from strategies.curriculum import curriculum_label
from strategies.pipeline import Pipeline

# `${curriculum_label:${.ordering},${.pacing}}` in conf/strategy/curriculum.yaml names each curriculum run.
OmegaConf.register_new_resolver("curriculum_label", curriculum_label, replace=True)
OmegaConf.register_new_resolver("prototypes_label", prototypes_label, replace=True)  # conf/strategy/prototypes.yaml


# Every default is written here, once; conf/ YAML files set only what differs from it.


@dataclass
class TrainerConfig:
    """The MNIST-1D reference recipe: Adam, lr 1e-2, batch 100, 6,000 steps on 4,000 samples.

    The budget in epochs scales with the selection (a 50% subset trains half the steps): the saving a strategy
    buys. `trainer.steps=6000 trainer.epochs=null` holds the step count fixed instead.
    """

    epochs: int | None = 150  # 150 epochs x 40 steps = the reference's 6,000 steps on 4,000 samples
    steps: int | None = None  # set instead of epochs for a fixed step budget (then epochs: null)
    # or samples seen (forwarded from the data), e.g. to compare a strategy that skips samples at equal data seen
    samples: int | None = None
    batch_size: int = 100
    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2})
    scheduler: Any = None  # e.g. {_target_: harness.schedules.cosine, _partial_: true}
    eval_every_epochs: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, CUDA only
    compile: bool = False  # torch.compile, CUDA only
    deterministic: bool = False  # torch.use_deterministic_algorithms
    workers: int = 1  # data-parallel workers for one trial
    target_accuracy: float | None = None  # time-to-accuracy: log tta_s/tta_steps/tta_energy_j when test acc reaches it
    stop_at_target: bool = False  # end training at the first evaluation that reaches target_accuracy
    augment: str | None = None  # per training batch, on the device (harness/augment.py): null | crop_flip
    crop_padding: int = 4  # crop_flip: reflect padding in pixels on each side before the random crop back to size
    label_smoothing: float = 0.0  # cross-entropy label smoothing (Szegedy et al. 2016) of the training loss


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI when set, else sqlite:///mlflow.db in the working directory; a server: http://host:5000
    uri: str | None = None
    experiment: str = "winnow"


@dataclass
class CorruptionConfig:
    """Seeded corruptions of the training rows, ground truth kept (harness/data/corrupt.py, docs/data-audits.md).
    Applied in this order: imbalance, label noise, then exact duplicates, near duplicates, outliers appended."""

    label_noise: float = 0.0  # fraction of training labels moved to another class (seeded, stream "corruption")
    label_noise_kind: str = "symmetric"  # symmetric: to a uniform other class | pair: class c to c+1 mod C
    exact_duplicates: float = 0.0  # append this fraction of the training rows again as byte-identical copies
    near_duplicates: float = 0.0  # append this fraction as noisy copies at near_duplicate_cosine to their source
    near_duplicate_cosine: float = 0.99  # expected cosine similarity of a near duplicate to its source (flattened)
    outliers: float = 0.0  # append this fraction of samples from another distribution, each with a random label
    outlier_kind: str = "noise"  # noise: Gaussian at the per-feature mean/std | shuffled: a row, features permuted
    imbalance_rho: float = 1.0  # long tail (CIFAR-LT): class c keeps n_max * rho^(-c/(C-1)) rows; 1: off


@dataclass
class ProbeConfig:
    """The proxy training that per-sample signals come from (harness/signals); runs only for strategies that need it."""

    # Defaults follow the papers; harness/signals/plan.py says how they combine, docs/strategies.md what each costs.
    model: Any = None  # proxy model config (a mapping with _target_); null: the trial's model (SVP: a smaller one)
    epochs: int | None = None  # probe length L in epochs, with the trial's recipe; null: the trial's budget in epochs
    runs: int | None = None  # independent runs, averaged; null: 10 for early scores alone (Paul et al.), else 1
    score_at: float = 0.1  # EL2N, last-layer GraNd, early embeddings at this fraction of L (Paul et al.: 20 of 200)
    grand_at: float = 0.0  # GraNd over all parameters at this fraction of L; 0: at initialisation (Paul et al.)
    subset: float = 1.0  # fraction of the training set the probe trains on (seeded, stratified); scores cover all
    projection_dim: int = 128  # width of the `projection` signal (random projection of the raw inputs)


@dataclass
class EmbeddingsConfig:
    """Embeddings computed elsewhere, for `strategy.embedding=file` (harness/signals/embeddings_file.py)."""

    path: str | None = None  # .npy, float (training rows x features), row i = sample i of the original training set


@dataclass
class AuditConfig:
    """Contamination audit of the test set against the training set before selection (harness/audit.py): logged,
    never changes what is selected or trained. Not part of a trial's identity (config_hash)."""

    contamination: bool = False  # true: log how many test samples have an exact or near copy in the training set
    threshold: float = 0.98  # cosine at or above which a pair is near; why 0.98: strategies/decontaminate.py
    space: str = "raw"  # raw (flattened inputs) | projection (the `projection` signal's map; probe.projection_dim)


@dataclass
class CostConfig:
    """How energy is estimated and what it costs (docs/cost.md). Not part of a trial's identity (config_hash)."""

    # CPU estimate without RAPL: W per busy core x CPU seconds (labelled `estimate`); null: no estimate. Green
    # Algorithms (Lannelongue et al. 2021) charges a CPU its TDP per core, about 10-15 W for current server parts
    # (a 205 W, 16-core Xeon Gold 6246R is 12.8 W/core): 12 W is the middle, an order-of-magnitude figure.
    watts_per_core: float | None = 12.0
    poll_s: float = 0.1  # background sampling period: NVML power without an energy counter, RAPL wrap-around
    co2e_g_per_kwh: float = 475.0  # world-average grid carbon intensity (IEA 2019; CodeCarbon's fallback)
    usd_per_gpu_hour: float = 2.5  # on-demand price of one data-centre GPU (order of magnitude; set yours)
    usd_per_cpu_core_hour: float = 0.04  # on-demand price of one vCPU (order of magnitude; set yours)


@dataclass
class WinnowConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    seed: int = 0  # derives every generator: init, data order, selection (harness/seeding.py)
    cache_dir: str = ".winnow/cache"  # generated datasets and signals, content-addressed, shared by a sweep


def register_schemas() -> None:
    ConfigStore.instance().store(name="winnow_schema", node=WinnowConfig)


# Keys that name where things go, not what the trial is: left out of the config hash.
_NOT_IDENTITY = ("tracking", "cache_dir", "hydra", "cost", "audit")


def _stage_class(strategy: Any) -> Any:
    """The strategy's class (or None when its target cannot be imported: `validate` reports that with its key)."""
    try:
        return get_method(strategy["_target_"])
    except Exception:
        return None


def effective_fraction(cfg: DictConfig) -> float:
    """The target fraction the trial really works to: 1 for a stage that `keeps_all` (full data), whatever
    `strategy.fraction` says. So `-m strategy=full,random strategy.fraction=0.1,0.3` gives full one identity and
    one report row.
    """
    if "_target_" in cfg.strategy and getattr(_stage_class(cfg.strategy), "keeps_all", False):
        return 1.0
    return float(cfg.strategy.get("fraction", 1.0))


def _uses_probe(cfg: DictConfig) -> bool:
    """Whether the trial's strategy needs a probe signal (True when the strategy cannot be built here: keep it all)."""
    try:
        return bool(build_strategy(cfg).needs & set(PROBE_SIGNALS))
    except Exception:
        return True


def config_hash(cfg: DictConfig) -> str:
    """Names a trial by its resolved config minus output locations; resume and caches key on it.

    A strategy class may drop the arguments its other settings make irrelevant (`Stage.identity_args`).
    """
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in _NOT_IDENTITY:
        d.pop(k, None)
    if isinstance(d.get("trainer"), dict) and d["trainer"].get("samples") is None:
        d["trainer"].pop("samples", None)  # added later: unset, it leaves earlier runs' hashes as they were
    if isinstance(d.get("dataset"), dict) and d["dataset"].get("val_fraction") is None:
        d["dataset"].pop("val_fraction", None)  # likewise
    if isinstance(d.get("embeddings"), dict) and d["embeddings"].get("path") is None:
        d.pop("embeddings")  # likewise
    if isinstance(d.get("corruption"), dict):  # likewise: corruption keys after label_noise, off or meaning nothing
        _drop_unused_corruption_keys(d["corruption"])
    trainer = d.get("trainer")
    if isinstance(trainer, dict):  # likewise: no augmentation (its padding then means nothing), no smoothing
        if trainer.get("augment") is None:
            trainer.pop("augment", None)
            trainer.pop("crop_padding", None)
        if trainer.get("label_smoothing", 0) == 0:
            trainer.pop("label_smoothing", None)
    if "probe" in d and not _uses_probe(cfg):  # a strategy without a probe: its settings change nothing
        d.pop("probe")
    strategy = d.get("strategy")
    if isinstance(strategy, dict) and "_target_" in strategy:
        if "fraction" in strategy:
            strategy["fraction"] = effective_fraction(cfg)
        hook = getattr(_stage_class(strategy), "identity_args", None)
        d["strategy"] = hook(strategy) if hook else strategy
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# A setting that qualifies a corruption means nothing while that corruption is off.
_CORRUPTION_QUALIFIES = {"label_noise_kind": "label_noise", "near_duplicate_cosine": "near_duplicates",
                         "outlier_kind": "outliers"}


def _drop_unused_corruption_keys(corruption: dict) -> None:
    """Keys added after label_noise leave a trial's identity when at their default, or when they qualify a
    corruption that is off, so earlier runs keep their hashes and `outlier_kind` alone makes no new trial."""
    defaults = {f.name: f.default for f in fields(CorruptionConfig) if f.name != "label_noise"}
    given = dict(corruption)  # as set, before any key is dropped
    for key, default in defaults.items():
        off = key in _CORRUPTION_QUALIFIES and given.get(_CORRUPTION_QUALIFIES[key]) == 0
        if key in corruption and (corruption[key] == default or off):
            corruption.pop(key)


def _check_target(key: str, node: Any) -> None:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise UserError(f"{key}: expected a mapping with a _target_")
    try:
        get_method(node._target_)
    except Exception:
        raise UserError(f"{key}._target_={node._target_}: cannot be imported; expected a class or function") from None


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{key}={value}: expected a positive integer")


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_device(device: str) -> None:
    """The CUDA device named exists on this machine (torch would fail on its first tensor, after the run started)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"trainer.device={device}: no CUDA device on this machine; expected auto or cpu")
    index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
    if index >= count:
        raise UserError(f"trainer.device={device}: this machine has {count} CUDA device{'s' * (count > 1)}; "
                        f"expected cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}, cuda or auto")


# torch.optim names a bad argument in words ("Invalid learning rate: -1", "Invalid weight_decay value: -1"): the
# config key each phrase means, and what the key accepts; any other "Invalid <key> value" takes a number >= 0.
_TORCH_OPTIM_WORDS = {"learning rate": "lr", "epsilon": "eps", "beta parameter": "betas", "eta values": "etas"}
_OPTIM_EXPECTED = {"betas": "two numbers in [0, 1)", "rho": "a number in [0, 1]",
                   "etas": "(etaminus, etaplus) with 0 < etaminus < 1 < etaplus"}
# Numeric arguments of torch's optimizers: a string there gives torch's TypeError about `<=`, not naming the key.
_OPTIM_NUMBERS = ("lr", "eps", "weight_decay", "momentum", "dampening", "alpha", "lr_decay", "rho", "momentum_decay")


def _optimizer_error(opt: DictConfig, e: Exception) -> str:
    text = first_line(e.__cause__ or e)
    key = next((k for words, k in _TORCH_OPTIM_WORDS.items() if words in text), None)
    if key is None and (m := re.search(r"Invalid (\w+) value", text)):
        key = m.group(1)
    if key is not None and key in opt:
        expected = _OPTIM_EXPECTED.get(key, "a number >= 0")
        return f"trainer.optimizer.{key}={opt[key]}: expected {expected} (torch: {text})"
    return f"trainer.optimizer: cannot build {opt._target_} ({text})"


def _check_optimizer(t: DictConfig) -> None:
    """Build the optimizer (and scheduler) on a dummy parameter: torch checks its arguments only when the trial
    builds it, after data loading and selection."""
    import torch

    opt = t.optimizer
    for key in _OPTIM_NUMBERS:
        value = opt.get(key)
        if key in opt and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UserError(f"trainer.optimizer.{key}={value}: expected a number")
    try:
        optimizer = build_optimizer(t, [torch.nn.Parameter(torch.zeros(1))])
    except Exception as e:
        raise UserError(_optimizer_error(opt, e)) from None
    if t.scheduler is not None:
        try:  # any positive step count shows a bad argument
            build_scheduler(t, optimizer, total_steps=t.steps or 100)
        except Exception as e:
            raise UserError(f"trainer.scheduler: cannot build {t.scheduler._target_} "
                            f"({first_line(e.__cause__ or e)})") from None


def _check_models_fit(cfg: DictConfig, source: Any, pipeline: Pipeline, check_files: bool) -> None:
    """One forward of the model (and the probe's model, when the strategy trains a probe) on samples shaped as the
    dataset's, when the source knows that shape cheaply, and the trainer's augmentation against that shape. A file's
    shape only where files are checked: in a sweep a missing or malformed file fails its own trial."""
    if getattr(source, "peek_reads_files", False) and not check_files:
        return
    peeked = source.peek() if hasattr(source, "peek") else None  # a user's own source may not have it
    if peeked is None:
        return
    shape, num_classes = peeked
    dataset = cfg.dataset.get("name", cfg.dataset._target_)
    if cfg.dataset.get("path"):  # a user's file: its name says more than the source's
        dataset = f"{dataset} ({cfg.dataset.path})"
    check_augment(cfg.trainer.augment, cfg.trainer.crop_padding, shape, dataset)
    check_model_fits(cfg.model, "model", dataset, shape, num_classes,
                     output_linear=getattr(pipeline.dynamic, "uses_last_layer", False))
    if cfg.probe.model is not None and pipeline.needs & set(PROBE_SIGNALS):
        check_model_fits(cfg.probe.model, "probe.model", dataset, shape, num_classes)


def validate(cfg: DictConfig, check_files: bool = True, check_device: bool = False) -> Pipeline:
    """Semantic checks on a composed config, before any compute: values, the optimizer torch would build, and one
    forward of the model on a dataset-shaped zeros batch (CPU); of the data only file headers and labels are read.

    A sweep checks files inside each trial instead (`check_files=False` up front), so one trial's
    missing file fails that trial's run and not the whole sweep. `check_device`: the job runs on this machine, so
    `trainer.device` must exist here. Returns the strategy it built and checked, so a trial builds it once.
    """
    try:  # an interpolation whose target is gone (`${trainer.optimizer.lr}` without an lr): one line, not 30 frames
        OmegaConf.to_container(cfg, resolve=True)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except InterpolationResolutionError as e:
        raise UserError(f"{e.full_key}: cannot be resolved ({first_line(e)}); expected the key it refers to, or "
                        f"set {e.full_key} on the command line") from None
    if missing:
        raise UserError(f"{missing[0]}: required value missing; set it on the command line ({missing[0]}=...)")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise UserError(f"seed={cfg.seed}: expected an integer >= 0")
    for key in ("dataset", "model", "strategy"):
        _check_target(key, cfg[key])
    _check_target("trainer.optimizer", cfg.trainer.optimizer)
    if cfg.trainer.scheduler is not None:
        _check_target("trainer.scheduler", cfg.trainer.scheduler)

    fraction = cfg.strategy.get("fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise UserError(f"strategy.fraction={fraction}: expected a number in (0, 1]")

    t = cfg.trainer
    given = [f"trainer.{unit}={t[unit]}" for unit in BUDGET_UNITS if t.get(unit) is not None]
    if len(given) != 1:
        how = f"{', '.join(given)}: the budget is given {len(given)} ways" if given else "no training budget is set"
        raise UserError(f"{how}; expected exactly one of trainer.epochs, trainer.steps, trainer.samples "
                        "(set the others to null)")
    for unit in BUDGET_UNITS:
        if t.get(unit) is not None:
            _positive_int(f"trainer.{unit}", t[unit])
    _positive_int("trainer.batch_size", t.batch_size)
    check_val_fraction(cfg.dataset.get("val_fraction"))
    if isinstance(cfg.audit.threshold, bool) or not 0 < cfg.audit.threshold <= 1:
        raise UserError(f"audit.threshold={cfg.audit.threshold}: expected a cosine in (0, 1]")
    if cfg.audit.space not in ("raw", "projection"):
        raise UserError(f"audit.space={cfg.audit.space}: expected raw or projection")
    if cfg.audit.contamination and cfg.dataset.get("in_memory") is False:
        raise UserError("audit.contamination=true: the audit reads every row; expected dataset.in_memory=true")
    check_corruption(cfg.corruption, rows_in_file=cfg.dataset.get("in_memory") is False)
    _positive_int("trainer.eval_every_epochs", t.eval_every_epochs)
    _positive_int("trainer.workers", t.workers)
    if not _DEVICE.fullmatch(t.device):
        raise UserError(f"trainer.device={t.device}: expected auto, cpu, cuda or cuda:N")
    if check_device and t.workers == 1:  # several workers train on Ray Train's machines, not necessarily this one
        _check_device(t.device)

    if t.target_accuracy is not None and not 0 < t.target_accuracy <= 1:
        raise UserError(f"trainer.target_accuracy={t.target_accuracy}: expected a number in (0, 1] or null")
    if t.stop_at_target and t.target_accuracy is None:
        raise UserError("trainer.stop_at_target=true: expected trainer.target_accuracy to be set")
    if isinstance(t.label_smoothing, bool) or not 0 <= t.label_smoothing < 1:
        raise UserError(f"trainer.label_smoothing={t.label_smoothing}: expected a number in [0, 1)")
    if isinstance(t.crop_padding, bool) or t.crop_padding < 0:
        raise UserError(f"trainer.crop_padding={t.crop_padding}: expected an integer >= 0")
    check_augment(t.augment, t.crop_padding)
    c = cfg.cost
    if c.watts_per_core is not None and c.watts_per_core <= 0:
        raise UserError(f"cost.watts_per_core={c.watts_per_core}: expected a positive number or null")
    for key in ("poll_s", "co2e_g_per_kwh", "usd_per_gpu_hour", "usd_per_cpu_core_hour"):
        if c[key] < 0 or (key == "poll_s" and c[key] == 0):
            kind = "positive" if key == "poll_s" else "non-negative"
            raise UserError(f"cost.{key}={c[key]}: expected a {kind} number")

    p = cfg.probe
    for key in ("epochs", "runs", "projection_dim"):
        if p[key] is not None or key == "projection_dim":
            _positive_int(f"probe.{key}", p[key])
    for key in ("score_at", "grand_at"):
        if isinstance(p[key], bool) or not 0 <= p[key] <= 1:
            raise UserError(f"probe.{key}={p[key]}: expected a fraction of the probe's training in [0, 1] (0: at "
                            "initialisation)")
    if isinstance(p.subset, bool) or not 0 < p.subset <= 1:
        raise UserError(f"probe.subset={p.subset}: expected a fraction of the training set in (0, 1]")
    if p.model is not None:
        _check_target("probe.model", p.model)

    _check_optimizer(t)
    pipeline = build_strategy(cfg)
    dynamic = pipeline.dynamic
    if getattr(dynamic, "needs_validation", False) and cfg.dataset.get("val_fraction") is None:
        name = pipeline.names[-1]
        raise UserError(f"strategy={name} selects against a validation split; expected dataset.val_fraction in "
                        "(0, 0.5]")
    source = build_dataset(cfg)
    in_memory = sorted(pipeline.needs & set(IN_MEMORY_SIGNALS))
    if in_memory and cfg.dataset.get("in_memory") is False:  # the npy source reading rows a batch at a time
        raise UserError(rows_in_file_message(in_memory[0]))
    if check_files:
        source.check()
    _check_models_fit(cfg, source, pipeline, check_files)
    if FILE_SIGNAL in pipeline.needs:
        if changed := rows_changed_by(cfg.corruption):  # the file has one row per original training sample
            raise UserError(f"{changed} adds or removes training rows, which embeddings.path (one row per original "
                            "training sample) cannot follow; expected no row-changing corruption with embedding=file")
        _check_embeddings(cfg, source, check_files)
    return pipeline


def _check_embeddings(cfg: DictConfig, source: Any, check_files: bool) -> None:
    """`embeddings.path` is set; where files are checked, its .npy header says 2-D float and its row count is the
    training set's, when the source can count its training rows cheaply (`Source.train_rows` is not None)."""
    path = cfg.embeddings.path
    if not path:
        raise UserError(f"embeddings.path is null: strategy={cfg.strategy.get('name', cfg.strategy._target_)} reads "
                        "embedding=file; expected embeddings.path=... (an .npy file, one row per training sample)")
    if check_files:
        count = getattr(source, "train_rows", None)  # a user's source need not subclass Source
        check_embeddings_file(path, count(cfg.cache_dir) if callable(count) else None)
