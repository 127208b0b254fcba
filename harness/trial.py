"""One trial: data -> selection -> training -> evaluation, measured and recorded in one MLflow run."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness import manifest
from harness.build import build_dataset, build_model
from harness.card import card_json, dataset_card
from harness.config import config_hash, effective_fraction, validate
from harness.data import Dataset
from harness.data.corrupt import corrupt, ground_truth_arrays, ground_truth_counts, selection_audit
from harness.data.validation import split_validation
from harness.ddp import train_ddp
from harness.flops import forward_flops, step_flops
from harness.launch_context import launch_tags
from harness.meters import Meter, cost_figures
from harness.numerics import Numerics
from harness.seeding import derive_seed
from harness.select import run_selection
from harness.tracking import TrialRun, flatten, trial_run
from harness.train import TrainOutcome, resolve_device, train

log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    run_id: str
    config_hash: str
    test_accuracy: float
    n_selected: int
    metrics: dict[str, float]


def _peak_rss_bytes(stages_peak: float) -> float:
    """The trial's peak RSS: the largest stage peak (meters) or that of a helper process it started (KiB)."""
    own = stages_peak if stages_peak == stages_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return float(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024))


def _audit_contamination(cfg: DictConfig, data: Dataset, run: TrialRun) -> dict:
    """`audit.contamination=true`: exact and near copies of test samples in the training set (harness/audit.py). An
    analysis of the data, not the strategy's cost: outside the meter's stages. A flagged overlap is a warning on the
    console, the tag `audit_flagged` and the pairs as `contamination_pairs.npz`; the run goes on."""
    from harness.audit import contamination

    start = time.perf_counter()
    report = contamination(data.x_train, data.x_test, cfg.audit.threshold, space=cfg.audit.space, seed=cfg.seed,
                           projection_dim=cfg.probe.projection_dim)
    run.metrics({"audit_s": time.perf_counter() - start, "audit_n_exact": report.n_exact,
                 "audit_n_near": report.n_near, "audit_fraction_contaminated": report.fraction_contaminated})
    run.tags({"audit_flagged": str(report.flagged).lower()})
    _log_npz(run, "contamination_pairs.npz", {"test_index": report.test_index, "train_index": report.train_index,
                                              "cosine": report.cosine, "exact": report.exact})
    if report.flagged:
        log.warning("contamination: %d of %d test samples have a copy in the training set (%d exact, %d near at "
                    "cosine >= %g in %s space); strategy=decontaminate drops them from training", report.n_contaminated,
                    report.n_test, report.n_exact, report.n_near, cfg.audit.threshold, cfg.audit.space)
    return report.summary()


def _log_npz(run: TrialRun, name: str, arrays: dict[str, np.ndarray]) -> None:
    """Several arrays as one artifact (`artifact_array` writes a single .npy)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        np.savez(path, **arrays)
        run.client.log_artifact(run.run_id, str(path))


def run_name(cfg: DictConfig) -> str:
    s = cfg.strategy
    frac = effective_fraction(cfg)
    return f"{s.get('name', 'strategy')}-f{frac:g}-{cfg.model.get('name', 'model')}-s{cfg.seed}"


def anytime_curves(before_train: dict[str, float], outcome: TrainOutcome) -> dict[str, list[tuple[int, float]]]:
    """Cumulative cost at each evaluation (step = epoch), everything before training included (data, probe,
    static selection) and evaluation left out: `eval_cum_s`, `eval_cum_energy_j`. With `epoch_test_accuracy`
    they draw test accuracy against cost so far (the report's anytime curves)."""
    s0, j0 = before_train.get("total_s", 0.0), before_train.get("total_energy_j", math.nan)
    return {"eval_cum_s": [(e, s0 + s) for e, s in outcome.eval_train_s],
            "eval_cum_energy_j": [(e, j0 + j) for e, j in outcome.eval_train_energy_j]}


def run_trial(cfg: DictConfig, replay: Numerics | None = None) -> TrialResult:
    """Run one configured trial end to end. Raises UserError for bad input (the run ends FAILED).

    `replay` (harness.reproduce) pins the device and torch thread count a recorded run had; the caller sets the
    threads (harness.numerics.torch_threads).
    """
    strategy = validate(cfg, check_files=False)  # values; files are checked inside the run so a sweep records them
    chash = config_hash(cfg)
    commit, dirty = manifest.git_state()
    tags = {
        "strategy": cfg.strategy.get("name", cfg.strategy._target_),
        "dataset": cfg.dataset.get("name", cfg.dataset._target_),
        "model": cfg.model.get("name", cfg.model._target_),
        "fraction": effective_fraction(cfg),
        "seed": cfg.seed,
        "config_hash": chash,
        "git_commit": commit,
        "git_dirty": dirty,
        **launch_tags(),  # sweep id, Ray node, CUDA_VISIBLE_DEVICES, worker pid when a launcher task runs it
    }
    device = replay.device if replay is not None else resolve_device(cfg.trainer.device)
    numerics = Numerics.of_trial(device, cfg.trainer.amp, cfg.trainer.deterministic)
    if cfg.trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    meter = Meter(device, watts_per_core=cfg.cost.watts_per_core, poll_s=cfg.cost.poll_s)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    with trial_run(cfg.tracking.uri, cfg.tracking.experiment, run_name(cfg), tags) as run:
        run.params(flatten(resolved))
        run.artifact_text("config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        run.artifact_text("environment.json", json.dumps(manifest.environment_manifest(), indent=2))

        source = build_dataset(cfg)
        source.check()
        # One-time preparation (generating, decoding into a cache) is not this trial's cost: a sweep's driver does
        # it before the trials start; a lone trial does it here, outside every metered stage, and logs its time.
        start = time.perf_counter()
        if source.prepare(cfg.cache_dir):
            run.metrics({"dataset_prepare_s": time.perf_counter() - start})
        with meter.stage("data"):
            # validation rows first, then corruption of the training rows only: the held-out set stays clean
            data = split_validation(source.load(cfg.cache_dir), cfg.dataset.get("val_fraction"), cfg.seed)
            data = corrupt(data, cfg.corruption, cfg.seed)
        run.tags({"dataset_fingerprint": data.fingerprint, **numerics.tags()})
        if skipped := getattr(source, "skipped", None):  # on_unreadable: skip; the card names the files
            run.metrics({"n_unreadable_skipped": len(skipped)})
        audit = _audit_contamination(cfg, data, run) if cfg.audit.contamination else None
        # what this run trained on, comparable byte for byte across runs; harness.export carries it
        run.artifact_text("dataset_card.json", card_json(dataset_card(cfg, data, source, audit=audit)))
        if data.val_indices is not None:  # rows of the original training set held out; x_train is the rest
            run.metrics({"n_val": len(data.val_indices)})
            run.artifact_array("val_indices.npy", data.val_indices)
        if data.duplicate_of is not None:  # some corruption ran: its ground truth, row by row
            run.metrics(ground_truth_counts(data))
            _log_npz(run, "corruption_ground_truth.npz", ground_truth_arrays(data))

        selection = run_selection(cfg, strategy, data, device, meter, run)
        if data.noisy is not None:  # how many corrupted labels the strategy let through
            run.metrics({"noisy_selected_fraction": float(data.noisy[selection.indices].mean())})
        if data.corruptions:  # per kind, what the selection kept; for duplicates, how well it removed the copies
            run.metrics(selection_audit(data, selection.indices))

        torch.manual_seed(derive_seed(cfg.seed, "init"))
        model = build_model(cfg.model, data.input_shape, data.num_classes)
        # Counted on a copy, outside every stage: measurement is not the strategy's cost. It also warms up
        # the kernels, so the first trial of a worker process is not charged one-off start-up time.
        first = torch.from_numpy(data.x_train[selection.indices[: cfg.trainer.batch_size]]).to(device)
        flops_per_step = step_flops(model.to(device), first, torch.from_numpy(
            data.y_train[selection.indices[: cfg.trainer.batch_size]]).to(device))
        flops_per_forward_sample = forward_flops(model, first) / len(first)
        before_train = meter.totals()  # what the anytime curve starts from: data, probe and selection
        dynamic = strategy.dynamic
        if dynamic is not None:
            run.tags({"dynamic_stage": strategy.names[-1]})
        epoch_target = max(1, round(tags["fraction"] * len(data.y_train)))  # samples per epoch (RS2)
        with meter.stage("train"):
            if cfg.trainer.workers > 1:  # data-parallel on Ray Train; the selection above is shared by all workers
                outcome = train_ddp(model, data, selection, cfg.trainer, cfg.seed, device, dynamic, epoch_target)
            else:
                outcome = train(model, data, selection, cfg.trainer, cfg.seed, device, meter=meter, dynamic=dynamic,
                                epoch_target=epoch_target)
        # evaluation and per-epoch selection inside the loop are booked as their own stages, each with its time
        # share of the train stage's energy; selection counts in total_s, as the static selection does
        meter.add("eval", outcome.eval_s, from_stage="train")
        if dynamic is not None:
            meter.add("dynamic_selection", outcome.dynamic_selection_s, from_stage="train")

        n_train = len(data.y_train)
        metrics = {
            "test_accuracy": outcome.final_test_accuracy,
            "n_selected": len(selection.indices),
            "n_train": n_train,
            "selected_fraction": len(selection.indices) / n_train,
            "steps": outcome.steps,
            "epochs": outcome.epochs,
            "samples_seen": outcome.samples_seen,
            "samples_forwarded": outcome.samples_forwarded,
            "samples_backpropagated": outcome.samples_backpropagated,
            "num_params": sum(p.numel() for p in model.parameters()),
            **(totals := meter.totals()),
            **cost_figures(totals, meter.n_gpus, cfg.cost.co2e_g_per_kwh, cfg.cost.usd_per_gpu_hour,
                           cfg.cost.usd_per_cpu_core_hour),
            # steps x (forward + backward), plus forward-only passes (Selective-Backprop's selection forwards)
            "train_flops": float(flops_per_step * outcome.steps + flops_per_forward_sample
                                 * (outcome.samples_forwarded - outcome.samples_backpropagated)),
            "tta_s": outcome.tta_s,
            "tta_steps": outcome.tta_steps,
            "tta_energy_j": outcome.tta_energy_j,
            "peak_rss_bytes": _peak_rss_bytes(totals.get("peak_rss_bytes", float("nan"))),
        }
        run.tags(meter.tags())
        run.curves({"epoch_train_loss": outcome.train_loss, "epoch_test_accuracy": outcome.test_accuracy,
                    "epoch_selected_fraction": outcome.epoch_selected_fraction,
                    "epoch_selection_s": outcome.epoch_selection_s, "round_selection_s": outcome.round_selection_s,
                    "round_selected": outcome.round_selected, **anytime_curves(before_train, outcome)})
        run.metrics(metrics)
        return TrialResult(run.run_id, chash, outcome.final_test_accuracy, len(selection.indices), metrics)
