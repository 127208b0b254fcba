"""Compute the signals a strategy needs: from the data, or from the probe through its on-disk cache.

Probe signals are cached under `cfg.cache_dir/signals/`, content-addressed by everything that changes them (dataset
fingerprint, the probe's plan and model, the trainer's recipe, the device type and precision, the seed) and written
atomically, so a sweep over strategies and fractions trains each probe once per seed. A lock file per key makes
concurrent trials of one key wait for the one that trains it (`signals_lock`), so they all read the same signals.
What the probe cost travels with the cache (`<key>.cost.json`), and `ProbeRecord.charge` books it on every run that
uses it: a cache hit never makes a strategy look cheaper than it is.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.data import Dataset, atomic_save_npz, atomic_write_text
from harness.data.rows import FileRows
from harness.errors import UserError
from harness.signals import DATA_SIGNALS, IN_MEMORY_SIGNALS, PROBE_SIGNALS, rows_in_file_message
from harness.signals.plan import ProbePlan, plan_probe

if TYPE_CHECKING:
    import torch

    from harness.meters import Meter

PROJECTION_CHUNK_BYTES = 64 << 20  # rows left in their file are projected this many bytes at a time
# bump when the probe's computation changes, so old caches are not read (3: label noise in the fingerprint; the
# probe's plan; per-presentation forgetting; GraNd over all parameters)
CACHE_VERSION = 3
# Trainer keys that do not change what the probe computes: its budget is the plan's, it trains alone, evaluates once
NOT_PROBE_IDENTITY = ("epochs", "steps", "samples", "eval_every_epochs", "workers", "target_accuracy",
                      "stop_at_target", "device", "amp", "compile")


@dataclass(frozen=True)
class ProbeRecord:
    """The probe behind a trial's signals: trained by this call or read from the cache."""

    cache_hit: bool
    cache_path: Path
    test_accuracy: float
    train_s: float  # what training the probe cost when it was computed (also on a cache hit)
    flops: float | None  # caches written before FLOPs were counted lack them
    plan: ProbePlan | None = None

    def metrics(self) -> dict[str, float]:
        out = {"cache_hit": float(self.cache_hit), "probe_test_accuracy": self.test_accuracy,
               "probe_train_s": self.train_s}
        if self.flops is not None:
            out["probe_flops"] = self.flops
        if self.plan is not None:  # what the probe trained: runs x epochs x subset, in epochs of the training set
            out.update(probe_runs=float(self.plan.runs), probe_epochs=float(self.plan.stop_epoch),
                       probe_trained_epochs=self.plan.trained_epochs)
        return out

    @property
    def cost_path(self) -> Path:
        return self.cache_path.with_suffix(".cost.json")

    def charge(self, meter: Meter) -> None:
        """Never hide the probe's cost. The run that trained it records its time and energy (meter stage `probe`)
        beside the cache entry; a run that reads the cache is charged them as stage `probe_cached`, so
        `total_s`/`total_energy_j` are what the strategy costs on its own."""
        if not self.cache_hit:
            # the probe's own share of the stage: the stage also computes data signals and reads embeddings files,
            # which a later trial reading this cache pays for itself
            stage_s = meter.seconds.get("probe", 0.0)
            share = min(1.0, self.train_s / stage_s) if stage_s > 0 else 1.0
            energy = {k: v * share for k, v in meter.stage_energy_j("probe").items()}
            # atomic: concurrent trials never read half a file
            atomic_write_text(self.cost_path, json.dumps({
                "probe_s": min(self.train_s, stage_s) if stage_s > 0 else self.train_s, "probe_energy_j": energy}))
        elif self.cost_path.exists():
            cost = json.loads(self.cost_path.read_text())
            meter.charge("probe_cached", cost["probe_s"], cost["probe_energy_j"])
        else:  # a cache written before costs were recorded beside it: its training time is all that is known
            meter.charge("probe_cached", self.train_s, {})


def probe_plan(needs: frozenset[str], cfg: DictConfig, data: Dataset) -> ProbePlan:
    return plan_probe(cfg.probe, cfg.trainer, needs, len(data.y_train))


def probe_key(cfg: DictConfig, data: Dataset, plan: ProbePlan, device: torch.device) -> str:
    """Names the probe's result by everything it depends on (not by output paths or the device's index).

    The device type and the precision are in it: bf16 autocast (on CUDA) and another device's kernels give other
    numbers, and a signal must not be served from a probe computed another way."""
    model = OmegaConf.to_container(cfg.probe.model if cfg.probe.model is not None else cfg.model, resolve=True)
    model.pop("name", None)  # a report label, not the network
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    recipe = {k: v for k, v in trainer.items() if k not in NOT_PROBE_IDENTITY}
    if recipe.get("augment") is None:  # no augmentation: its padding means nothing
        recipe.pop("crop_padding", None)
    amp = bool(cfg.trainer.amp) and device.type == "cuda"  # what the training loop does with trainer.amp
    compiled = bool(cfg.trainer.compile) and device.type == "cuda"
    ident = {"v": CACHE_VERSION, "data": data.fingerprint, "plan": plan.as_dict(),
             "model": model, "trainer": recipe, "seed": cfg.seed,
             "device": device.type, "amp_bf16": amp, "compile": compiled}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def signals_lock(needs: frozenset[str], cfg: DictConfig, data: Dataset, device: torch.device) -> AbstractContextManager:
    """Held while a trial computes (or reads) its probe and books its cost: a second trial of the same key waits,
    then reads the first one's cache and its cost file, instead of training the probe again. A no-op when no probe
    signal is needed."""
    if not needs & set(PROBE_SIGNALS):
        return nullcontext()
    from filelock import FileLock

    path = Path(cfg.cache_dir) / "signals" / f"{probe_key(cfg, data, probe_plan(needs, cfg, data), device)}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path))


def data_signal(name: str, data: Dataset, seed: int, projection_dim: int) -> np.ndarray:
    from harness.seeding import numpy_rng  # imports torch: kept out of the preflight's imports
    from strategies.base import l2_normalise

    x = data.x_train
    if isinstance(x, FileRows):  # rows left in their file: only the projection is small enough to hold
        if name in IN_MEMORY_SIGNALS:
            raise UserError(rows_in_file_message(name))
        dim = math.prod(x.shape[1:])
        proj = numpy_rng(seed, "projection").standard_normal((dim, projection_dim), dtype=np.float32)
        chunk = max(1, PROJECTION_CHUNK_BYTES // (4 * dim))
        return l2_normalise(np.concatenate([l2_normalise(x.take(slice(i, i + chunk))) @ proj
                                            for i in range(0, len(x), chunk)]))
    if name == "inputs":
        return x
    raw = l2_normalise(x)
    if name == "raw":
        return raw
    if name == "test_similarity":  # per training row, its largest cosine to any test row: what decontaminate drops
        from strategies.decontaminate import max_cosine_to

        return max_cosine_to(raw, l2_normalise(data.x_test))
    proj = numpy_rng(seed, "projection").standard_normal((raw.shape[1], projection_dim), dtype=np.float32)
    return l2_normalise(raw @ proj)


def compute_signals(needs: frozenset[str], cfg: DictConfig, data: Dataset,
                    device: torch.device) -> tuple[dict[str, np.ndarray], ProbeRecord | None]:
    """The signals in `needs`, and the probe behind them (None when none was needed). The `file` signal is not
    computed here: `harness.signals.embeddings_file.load_embeddings` reads it, with the file's fingerprint."""
    out: dict[str, np.ndarray] = {}
    for name in sorted(needs & set(DATA_SIGNALS)):
        out[name] = data_signal(name, data, cfg.seed, cfg.probe.projection_dim)
    if not needs & set(PROBE_SIGNALS):
        return out, None
    plan = probe_plan(needs, cfg, data)
    path = Path(cfg.cache_dir) / "signals" / f"{probe_key(cfg, data, plan, device)}.npz"
    hit = path.exists()
    if hit:
        with np.load(path) as f:
            probe = {k: f[k] for k in f.files}
    else:
        from harness.signals.probe import run_probe

        start = time.perf_counter()
        probe = run_probe(cfg, data, device, plan)
        probe["probe_train_s"] = np.array(time.perf_counter() - start)
        atomic_save_npz(path, **probe)
    record = ProbeRecord(hit, path, float(probe["probe_test_accuracy"]), float(probe["probe_train_s"]),
                         float(probe["probe_flops"]) if "probe_flops" in probe else None, plan)
    out.update({k: probe[k] for k in needs & set(PROBE_SIGNALS)})
    return out, record
