"""Per-sample signals for selection: from a probe (a proxy model trained a few times) or straight from the data.

    signals, info = compute_signals(needs, cfg, data, device)

Probe signals are cached on disk under `cfg.cache_dir/signals/`, content-addressed by (dataset fingerprint,
probe config, trainer recipe, seed), and written atomically, so a sweep over strategies and fractions trains
the probe once per seed; `info["cache_hit"]` says whether this call trained it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.data import Dataset, atomic_save_npz

# Signals the probe computes (harness/signals/probe.py); one probe yields all of them, cheap next to its training.
PROBE_SIGNALS = ("embeddings", "losses", "loss", "el2n", "grand", "forgetting", "least_confidence", "margin",
                 "entropy")
# Signals that need no probe: the samples themselves ("inputs", for exact dedup), the flattened inputs scaled
# to unit norm ("raw"), and a seeded Gaussian random projection of them, unit norm ("projection").
DATA_SIGNALS = ("inputs", "raw", "projection")
ALL_SIGNALS = PROBE_SIGNALS + DATA_SIGNALS
CACHE_VERSION = 2  # bump when the probe's computation changes, so old caches are not read


def probe_key(cfg: DictConfig, data: Dataset) -> str:
    """Names the probe's result by everything it depends on (not by output paths or the device)."""
    probe = OmegaConf.to_container(cfg.probe, resolve=True)
    if probe["model"] is None:
        probe["model"] = OmegaConf.to_container(cfg.model, resolve=True)
    probe.pop("projection_dim", None)  # not a probe input
    t = cfg.trainer
    recipe = {"optimizer": OmegaConf.to_container(t.optimizer, resolve=True),
              "scheduler": OmegaConf.to_container(t.scheduler, resolve=True) if t.scheduler else None,
              "batch_size": t.batch_size}
    ident = {"v": CACHE_VERSION, "data": data.fingerprint, "probe": probe, "trainer": recipe, "seed": cfg.seed}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def data_signal(name: str, data: Dataset, seed: int, projection_dim: int) -> np.ndarray:
    from harness.seeding import numpy_rng  # imports torch: kept out of the preflight's imports
    from strategies.base import l2_normalise

    if name == "inputs":
        return data.x_train
    raw = l2_normalise(data.x_train)
    if name == "raw":
        return raw
    proj = numpy_rng(seed, "projection").standard_normal((raw.shape[1], projection_dim), dtype=np.float32)
    return l2_normalise(raw @ proj)


def compute_signals(needs: frozenset[str], cfg: DictConfig, data: Dataset,
                    device) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The signals in `needs`, and info for the run record: `cache_hit` (1/0), `probe_test_accuracy`,
    `probe_train_s` and `probe_flops` (the probe's training time and FLOPs when computed, also on a cache hit)."""
    out: dict[str, np.ndarray] = {}
    info: dict[str, float] = {}
    for name in sorted(needs & set(DATA_SIGNALS)):
        out[name] = data_signal(name, data, cfg.seed, cfg.probe.projection_dim)
    if needs & set(PROBE_SIGNALS):
        path = Path(cfg.cache_dir) / "signals" / f"{probe_key(cfg, data)}.npz"
        hit = path.exists()
        if hit:
            with np.load(path) as f:
                probe = {k: f[k] for k in f.files}
        else:
            from harness.signals.probe import run_probe

            start = time.perf_counter()
            probe = run_probe(cfg, data, device)
            probe["probe_train_s"] = np.array(time.perf_counter() - start)
            atomic_save_npz(path, **probe)
        info["cache_hit"] = float(hit)
        info["cache_path"] = str(path)
        info["probe_test_accuracy"] = float(probe["probe_test_accuracy"])
        # What training the probe cost when it was computed: a cache hit spends only the read (probe_s), and a
        # report that charges each strategy its full probe reads this.
        info["probe_train_s"] = float(probe["probe_train_s"])
        if "probe_flops" in probe:  # caches written before FLOPs were counted lack it
            info["probe_flops"] = float(probe["probe_flops"])
        out.update({k: probe[k] for k in needs & set(PROBE_SIGNALS)})
    return out, info
