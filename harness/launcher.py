"""A sweep on Ray core: one Ray task per trial, resume, retries, progress and a summary.

Used by the Hydra launcher plugin `hydra/launcher=ray` (hydra_plugins/winnow_ray_launcher). The driver
composes every job's config, skips those whose config hash already has a FINISHED run (resume), and
submits the rest as Ray tasks with the trial's resources. Ray retries a task whose worker or node died
(`max_retries`); a trial that raises is recorded FAILED by the trial itself and is not retried. After
each trial the driver reads its MLflow record for the result line and ends any run a dead worker left
RUNNING, so no run ever stays RUNNING (Ctrl-C included).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from harness.config import config_hash
from harness.errors import UserError, one_line
from harness.launch_context import launch_context

TAG_JOB = "sweep_job"  # "<sweep id>:<job index>": finds a job's runs, retried attempts included


class TrialsFailed(CompactHydraException):
    """Raised by Hydra's sweeper for a failed job; printed as one line (the summary above has details)."""


@dataclass
class JobSpec:
    """What a Ray task needs to run one Hydra job."""

    idx: int
    overrides: list[str]
    config: DictConfig  # the job's full config, hydra node included
    cwd: str  # the driver's working directory: relative paths (sqlite:///mlflow.db, cache_dir) resolve there
    threads: int  # torch threads: the task's CPUs, so concurrent trials do not oversubscribe cores
    context: dict[str, Any] = field(default_factory=dict)  # tags and DDP resources for the trial


@dataclass
class TaskResult:
    status: str  # COMPLETED or FAILED (Hydra's JobStatus name)
    value: Any  # the task function's return value (test accuracy) when COMPLETED
    error: str | None  # one line when FAILED
    working_dir: str
    task_start: float  # epoch seconds when the Ray task began (before the trial's imports)


def validate_launcher(params: DictConfig) -> None:
    """Values of `hydra.launcher` (types are checked by Hydra); one line naming the key."""
    def bad(key: str, expected: str) -> UserError:
        return UserError(f"hydra.launcher.{key}={params[key]}: expected {expected}")

    for key in ("num_cpus", "num_gpus"):
        if params[key] < 0:
            raise bad(key, "a number >= 0")
    if params.num_gpus > 1 and params.num_gpus != int(params.num_gpus):
        raise bad("num_gpus", "a fraction below 1 or a whole number (Ray cannot split several GPUs)")
    if params.memory is not None and params.memory <= 0:
        raise bad("memory", "a positive number of bytes")
    if params.max_retries < 0:
        raise bad("max_retries", "an integer >= 0")
    address = params.address
    if address and not (address == "auto" or address.startswith("ray://") or ":" in address):
        raise bad("address", "null (start Ray here), auto, ray://host:port or host:port")


def _guarded(task_function: TaskFunction) -> TaskFunction:
    # A task function may sys.exit on a user error; in a Ray worker that would kill the worker
    # (and Ray would retry a deterministic failure), so it becomes an ordinary exception.
    def call(cfg: DictConfig) -> Any:
        try:
            return task_function(cfg)
        except SystemExit as e:
            raise RuntimeError(f"trial exited with code {e.code}") from None

    return call


def run_job_in_worker(spec: JobSpec, task_function: TaskFunction, hydra_context: HydraContext,
                      singleton_state: dict) -> TaskResult:
    """The body of a Ray task: one Hydra job, as Hydra's own launchers run it."""
    task_start = time.time()
    import ray

    if os.path.isdir(spec.cwd):  # on another machine the driver's folder may not exist
        os.chdir(spec.cwd)
    try:
        import torch

        torch.set_num_threads(spec.threads)
    except ImportError:
        pass
    ctx = ray.get_runtime_context()
    tags = {**spec.context.get("tags", {}), "ray_node_id": ctx.get_node_id(), "worker_pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "launcher_task_start": task_start}
    setup_globals()
    Singleton.set_state(singleton_state)  # Hydra's plugin and config-store registry, as on the driver
    HydraConfig.instance().set_config(spec.config)
    try:
        with launch_context({**spec.context, "tags": tags}):
            ret = run_job(hydra_context=hydra_context, task_function=_guarded(task_function), config=spec.config,
                          job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    finally:
        if os.path.isdir(spec.cwd):  # undo a job's own chdir (hydra.job.chdir=true): the worker is reused
            os.chdir(spec.cwd)
    if ret.status == JobStatus.COMPLETED:
        return TaskResult("COMPLETED", ret.return_value, None, ret.working_dir or "", task_start)
    return TaskResult("FAILED", None, one_line(ret._return_value), ret.working_dir or "", task_start)


# ---------------------------------------------------------------------------------------------- driver


@dataclass
class Job:
    idx: int
    overrides: list[str]
    config: DictConfig
    chash: str
    uri: str
    experiment: str
    label: str = ""
    state: str = "pending"  # pending | skipped | finished | failed | cancelled
    reason: str = ""
    result: TaskResult | None = None


def _compose_jobs(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]],
                  initial_job_idx: int) -> list[Job]:
    from harness.tracking import tracking_uri

    jobs = []
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.id = f"{cfg.hydra.job.name}_{idx}"
            cfg.hydra.job.num = idx
            # The store is resolved here ($MLFLOW_TRACKING_URI included): a worker on another node lacks the
            # driver's environment. tracking is not part of the trial's identity.
            cfg.tracking.uri = tracking_uri(cfg.tracking.uri)
        task_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        jobs.append(Job(idx, list(overrides), cfg, config_hash(task_cfg), cfg.tracking.uri,
                        task_cfg.tracking.experiment))
    # Label each trial by the values that differ between trials (what the sweep sweeps).
    common = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    for j in jobs:
        j.label = " ".join(filter_overrides([o for o in j.overrides if o not in common])) or "(defaults)"
    return jobs


def _prepare_datasets(jobs: list[Job]) -> None:
    """One-time dataset preparation (generating MNIST-1D, decoding into a cache) here on the driver, once per
    distinct dataset, so it is never charged to whichever trial happens to run first. A dataset that cannot be
    prepared is left to its trials, which record the error in their runs."""
    from harness.build import build_dataset

    done: set[str] = set()
    for job in jobs:
        task_cfg = OmegaConf.masked_copy(job.config, ["dataset", "cache_dir"])
        key = json.dumps(OmegaConf.to_container(task_cfg, resolve=True), sort_keys=True, default=str)
        if key in done:
            continue
        done.add(key)
        try:
            source = build_dataset(task_cfg)
            source.check()
            source.prepare(task_cfg.cache_dir)
        except Exception:
            continue


def _finished_hashes(uri: str, experiment: str) -> set[str]:
    """Config hashes with a FINISHED run in the store. Also creates the store and the experiment here, once:
    eight trials creating a fresh SQLite store at the same moment race on its schema."""
    from mlflow.tracking import MlflowClient

    from harness.tracking import _create_experiment

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        _create_experiment(client, experiment)
        return set()
    hashes: set[str] = set()
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=5000,
                                  page_token=token)
        hashes.update(r.data.tags.get("config_hash", "") for r in page)
        token = page.token
        if not token:
            return hashes


def _connect(params: DictConfig) -> bool:
    """Connect to the configured cluster or start a local instance; True when this driver started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": params.log_to_driver, "logging_level": "ERROR",
                              "configure_logging": True}
    if params.address:
        _join(ray, str(params.address), kwargs)
        return True
    # address="local": always a new instance; a bare ray.init() would join any instance already running on this
    # machine (another sweep's, a test's), with its resources and its environment.
    local = {"address": "local", "include_dashboard": False, **OmegaConf.to_container(params.init, resolve=True)}
    ray.init(**local, **kwargs)
    return True


CONNECT_TIMEOUT_S = 5.0  # a cluster's GCS or Ray Client port answers at once; Ray itself retries for minutes


def _join(ray: Any, address: str, kwargs: dict[str, Any]) -> None:
    """Joins the cluster at `address`, or stops with one line naming hydra.launcher.address and what was wrong."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if host and port.isdigit():  # not `auto`, not a Ray Client address left to its default port
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as e:
            raise UserError(f"hydra.launcher.address={address}: no Ray cluster answers there ({one_line(e)}); "
                            "expected the address `ray start --head` printed") from None
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as e:
        # Ray 2.60 wraps the refusal as text: ConnectionError <- RuntimeError("... AuthenticationError ...").
        chain, cause = [], e
        while cause is not None:
            chain.append(cause)
            cause = cause.__cause__
        if not any("InvalidAuthToken" in str(c) or isinstance(c, ray.exceptions.AuthenticationError) for c in chain):
            raise UserError(f"hydra.launcher.address={address}: {one_line(e)}") from None
        # Ray sends its token to an explicitly given address only when told to (docs/cluster.md, token auth).
        raise UserError(f"hydra.launcher.address={address}: the cluster wants a token; export RAY_AUTH_MODE=token "
                        "with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN") from None


def _check_store_reachable(jobs: list[Job]) -> None:
    """A SQLite file on this machine cannot be written from another machine's trial: stop before compute."""
    import ray

    local_ip = ray.util.get_node_ip_address()
    remote = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} - {local_ip}
    if not remote:
        return
    for uri in {j.uri for j in jobs}:
        if not uri.startswith(("http://", "https://", "postgresql", "mysql", "databricks")):
            raise UserError(f"tracking.uri={uri}: the cluster has nodes on other machines "
                            f"({', '.join(sorted(remote))}), which cannot write this local store; expected an "
                            "MLflow server (tracking.uri=http://host:5000), see docs/cluster.md")


def _job_runs(job: Job, sweep_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(job.uri)
    exp = client.get_experiment_by_name(job.experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], f"tags.{TAG_JOB} = '{sweep_id}:{job.idx}'")


def _settle(job: Job, sweep_id: str, why: str) -> Any:
    """End runs of `job` that a dead or cancelled worker left RUNNING; return its final run, if any."""
    client, runs = _job_runs(job, sweep_id)
    for r in runs:
        if r.info.status == "RUNNING":
            client.set_tag(r.info.run_id, "error", why)
            client.set_tag(r.info.run_id, "error_type", "WorkerDied")
            client.set_terminated(r.info.run_id, status="FAILED")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[-1] if finished else (runs[0] if runs else None)


def _result_line(job: Job, run: Any) -> str:
    if job.state == "finished" and run is not None:
        m = run.data.metrics
        return (f"FINISHED {job.label}: test_accuracy={m.get('test_accuracy', float('nan')):.4f} "
                f"train_s={m.get('train_s', float('nan')):.1f} total_s={m.get('total_s', float('nan')):.1f} "
                f"run_id={run.info.run_id}")
    return f"{job.state.upper()} {job.label}: {job.reason}"


def _summary(jobs: list[Job]) -> str:
    by = {s: [j for j in jobs if j.state == s] for s in ("finished", "failed", "skipped", "cancelled")}
    lines = [f"sweep: {len(jobs)} trials: {len(by['finished'])} finished, {len(by['failed'])} failed, "
             f"{len(by['skipped'])} skipped (already FINISHED), {len(by['cancelled'])} cancelled"]
    lines += [f"  failed #{j.idx} {j.label}: {j.reason}" for j in by["failed"]]
    lines += [f"  cancelled #{j.idx} {j.label}" for j in by["cancelled"]]
    return "\n".join(lines)


def _job_return(job: Job, n_failed: int, n_total: int) -> JobReturn:
    ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config,
                    working_dir=job.result.working_dir if job.result else "", task_name=job.config.hydra.job.name)
    if job.state == "failed":
        ret.status = JobStatus.FAILED
        ret.return_value = TrialsFailed(f"winnow: {n_failed} of {n_total} trials failed (see the summary above)")
    else:
        ret.status = JobStatus.COMPLETED
        ret.return_value = job.result.value if job.result else None
    return ret


POLL_S = 0.5  # how often the driver's wait for trials looks at the Ctrl-C flag


def _on_sigint(handler: Any) -> Any:
    """Install `handler` for SIGINT and return the previous one; a no-op off the main thread (signal's rule)."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGINT, handler)


def launch(hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig,
           job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    import ray
    from tqdm import tqdm

    params = config.hydra.launcher
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)

    jobs = _compose_jobs(hydra_context, config, job_overrides, initial_job_idx)
    finished = {key: _finished_hashes(*key) for key in {(j.uri, j.experiment) for j in jobs}}
    if not params.rerun_finished:
        for j in jobs:
            if j.chash in finished[(j.uri, j.experiment)]:
                j.state, j.reason = "skipped", "a FINISHED run with this config hash exists"
    # One trial per identity: `strategy=full` swept over fractions is the same trial each time.
    first: dict[tuple, Job] = {}
    for j in jobs:
        key = (j.uri, j.experiment, j.chash)
        if j.state == "pending" and key in first:
            j.state, j.reason = "skipped", f"same config hash as job {first[key].idx}"
        first.setdefault(key, j)
    todo = [j for j in jobs if j.state == "pending"]
    _prepare_datasets(todo)

    started_ray = _connect(params) if todo else False
    sweep_id = uuid.uuid4().hex[:8]
    pending: dict[Any, Job] = {}
    # Ctrl-C sets a flag that the wait loop polls, instead of raising wherever the main thread happens to be: a
    # KeyboardInterrupt raised inside library code that catches it (seen intermittently: the sweep then ran to
    # the end and exited 0) would lose the user's Ctrl-C.
    interrupted = threading.Event()
    previous = _on_sigint(lambda *_: interrupted.set())
    try:
        if todo:
            _check_store_reachable(todo)
            pending = _submit(todo, params, sweep_id, task_function, hydra_context)
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="trial", dynamic_ncols=True,
                   file=sys.stderr, desc=f"sweep {sweep_id}")
        with bar:
            while pending:
                if interrupted.is_set():
                    raise KeyboardInterrupt
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                if not ready:
                    continue
                job = pending.pop(ready[0])
                try:
                    job.result = ray.get(ready[0])
                    job.state = "finished" if job.result.status == "COMPLETED" else "failed"
                    job.reason = job.result.error or ""
                except ray.exceptions.RayError as e:  # worker/node died more than max_retries times, or cancelled
                    job.state, job.reason = "failed", one_line(e)
                run = _settle(job, sweep_id, "the worker running this trial died; Ray retried the trial")
                bar.write(f"[{bar.n + 1}/{len(jobs)}] {_result_line(job, run)}")
                bar.update(1)
    except KeyboardInterrupt:
        _cancel(pending, sweep_id)
        print(_summary(jobs), flush=True)
        raise
    finally:
        _on_sigint(previous)
        if started_ray:
            ray.shutdown()
    if interrupted.is_set():  # Ctrl-C after the last trial came back: still an interrupted sweep
        print(_summary(jobs), flush=True)
        raise KeyboardInterrupt
    print(_summary(jobs), flush=True)
    n_failed = sum(j.state == "failed" for j in jobs)
    return [_job_return(j, n_failed, len(jobs)) for j in jobs]


def _submit(todo: list[Job], params: DictConfig, sweep_id: str, task_function: TaskFunction,
            hydra_context: HydraContext) -> dict[Any, Job]:
    import ray

    num_cpus, num_gpus = float(params.num_cpus), float(params.num_gpus)
    # Only the callbacks travel: the config loader is driver-side (every config is composed here).
    context = HydraContext(config_loader=None, callbacks=hydra_context.callbacks)
    fn = ray.put(task_function)
    ctx_ref = ray.put(context)
    state = ray.put(Singleton.get_state())
    remote = ray.remote(run_job_in_worker)
    cwd = os.getcwd()
    pending = {}
    for job in todo:
        workers = int(job.config.trainer.get("workers", 1)) if "trainer" in job.config else 1
        ddp = workers > 1
        # A data-parallel trial's task only coordinates: its workers (Ray Train) hold the CPUs and GPUs.
        opts: dict[str, Any] = {"num_cpus": 0 if ddp else num_cpus, "num_gpus": 0 if ddp else num_gpus,
                                "max_retries": int(params.max_retries), "retry_exceptions": False,
                                "name": f"trial-{job.idx}"}
        if params.memory and not ddp:
            opts["memory"] = int(params.memory)
        spec_context: dict[str, Any] = {"tags": {"sweep_id": sweep_id, TAG_JOB: f"{sweep_id}:{job.idx}"}}
        if ddp:
            spec_context["worker_resources"] = {"CPU": num_cpus, "GPU": num_gpus}
        spec = JobSpec(job.idx, job.overrides, job.config, cwd, max(1, int(num_cpus)), spec_context)
        pending[remote.options(**opts).remote(spec, fn, ctx_ref, state)] = job
    return pending


def _cancel(pending: dict[Any, Job], sweep_id: str) -> None:
    """Ctrl-C: stop queued and running trials, then end whatever they left RUNNING as FAILED."""
    import ray

    for ref in pending:
        ray.cancel(ref, force=True)
    for ref, job in pending.items():
        try:
            ray.get(ref, timeout=10)
        except Exception:
            pass
        job.state, job.reason = "cancelled", "sweep interrupted (Ctrl-C)"
        _settle(job, sweep_id, "sweep interrupted (Ctrl-C)")
