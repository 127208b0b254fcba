"""The Ray launcher (`hydra/launcher=ray`) through the real entry point: fault isolation, resume, retries
after a dead worker, Ctrl-C, and eight trials logging to one SQLite store at once.

One Ray instance serves the module (a single-node `ray.cluster_utils.Cluster`); sweeps join it with
`hydra.launcher.address`, except the concurrency test, which starts its own local instance (the default).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import HANG_S, REPO, make_npz, run_cli, runs_of

# A tiny trial: digits (1,437 train samples), an MLP, one epoch.
TINY = ("dataset=digits", "model=mlp", "trainer.epochs=1")


@pytest.fixture(scope="module")
def ray_address():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    yield cluster.address
    cluster.shutdown()


def sweep(*overrides: str, address: str | None = None, cwd: Path | None = None):
    extra = [f"hydra.launcher.address={address}"] if address else []
    return run_cli("-m", "hydra/launcher=ray", *extra, *overrides, cwd=cwd)


def popen_sweep(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.run", "-m", "hydra/launcher=ray", *overrides],
                            cwd=REPO, stdout=open(tmp_path / "out.txt", "w"), stderr=open(tmp_path / "err.txt", "w"),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_running_run(store: str, timeout: float = HANG_S):
    """The first run of the store that is RUNNING and has logged its dataset (so it is training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = runs_of(store)
        except Exception:  # the store or the experiment does not exist yet
            runs = None
        if runs is not None and len(runs) and "tags.dataset_fingerprint" in runs:
            busy = runs[(runs["status"] == "RUNNING") & runs["tags.dataset_fingerprint"].notna()]
            if len(busy):
                return busy.iloc[0]
        time.sleep(0.5)
    raise AssertionError("no trial started training in time")


@pytest.mark.slow
def test_missing_file_fails_its_trials_only_and_a_rerun_runs_only_those(ray_address, store, cache_dir, tmp_path):
    good = make_npz(tmp_path / "a.npz")
    missing = str(tmp_path / "missing.npz")
    args = ("dataset=npz", f"dataset.path={good},{missing}", "model=mlp", "trainer.epochs=2", "seed=0,1",
            f"tracking.uri={store}", f"cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}")

    first = sweep(*args, address=ray_address)
    assert first.returncode != 0
    assert "4 trials: 2 finished, 2 failed, 0 skipped" in first.stdout, first.stdout
    assert "2 of 4 trials failed" in first.stderr
    runs = runs_of(store)
    assert sorted(runs["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    failed = runs[runs["status"] == "FAILED"]
    assert (failed["params.dataset.path"] == missing).all()
    assert failed["tags.error"].str.contains(f"dataset.path={missing}: file not found").all()

    shutil.copy(good, missing)  # the user fixes the data and runs the same command again
    second = sweep(*args, address=ray_address)
    assert second.returncode == 0, second.stderr
    assert "4 trials: 2 finished, 0 failed, 2 skipped" in second.stdout, second.stdout
    runs = runs_of(store)
    assert len(runs) == 6  # only the two failed trials ran again
    finished = runs[runs["status"] == "FINISHED"]
    assert finished["tags.config_hash"].nunique() == 4 and len(finished) == 4

    forced = sweep(*args, "hydra.launcher.rerun_finished=true", address=ray_address)
    assert forced.returncode == 0 and "4 trials: 4 finished" in forced.stdout
    assert len(runs_of(store)) == 10


@pytest.mark.slow
def test_a_sweeps_runs_reproduce_and_no_trial_is_charged_the_datasets_generation(ray_address, store, tmp_path):
    # MNIST-1D generated into a fresh cache: the driver prepares it before the trials. Ray trials run with one torch
    # thread (num_cpus=1), the reproductions in a process that has two by default: the recorded count is replayed.
    # EL2N trains the probe in its trial and reads the cache on reproduction: a circumstance, not a difference.
    cache = tmp_path / "cache"
    res = sweep("dataset.num_samples=600", "model=mlp", "trainer.epochs=3", "strategy=full,el2n",
                "strategy.fraction=0.5", "probe.epochs=2", "probe.score_at=0.5", "probe.runs=1", "seed=0",
                f"tracking.uri={store}", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                address=ray_address)
    assert res.returncode == 0, res.stderr
    runs = runs_of(store)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert len(list((cache / "mnist1d").glob("*.npz"))) == 1
    assert "metrics.dataset_prepare_s" not in runs or runs["metrics.dataset_prepare_s"].isna().all()
    assert (runs["tags.torch_threads"] == "1").all() and (runs["tags.device"] == "cpu").all()
    for run_id in runs.run_id:
        rep = run_cli(run_id, "--tracking-uri", store, module="harness.reproduce")
        assert rep.returncode == 0, rep.stdout + rep.stderr
        assert rep.stdout.strip().splitlines()[-1] == "REPRODUCED"
        assert "ok    torch_threads              1" in rep.stdout
    el2n = runs[runs["tags.strategy"] == "el2n"].iloc[0]
    assert el2n["metrics.cache_hit"] == 0
    rep_el2n = runs_of(store).query("`tags.reproduction_of` == @el2n.run_id").iloc[0]
    assert rep_el2n["metrics.cache_hit"] == 1  # shown, not compared


@pytest.mark.slow
def test_a_killed_worker_is_retried_and_the_trial_finishes_once(ray_address, store, cache_dir, tmp_path):
    proc = popen_sweep(tmp_path, *TINY, "trainer.epochs=300", "seed=0", f"tracking.uri={store}",
                       f"cache_dir={cache_dir}", f"hydra.launcher.address={ray_address}",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    victim = wait_for_running_run(store)
    os.kill(int(victim["tags.worker_pid"]), signal.SIGKILL)
    assert proc.wait(timeout=HANG_S) == 0, (tmp_path / "err.txt").read_text()
    runs = runs_of(store)
    assert len(runs) == 2 and runs["tags.config_hash"].nunique() == 1
    killed = runs[runs.run_id == victim.run_id].iloc[0]
    assert killed["status"] == "FAILED" and "worker" in killed["tags.error"] and "died" in killed["tags.error"]
    retry = runs[runs.run_id != victim.run_id].iloc[0]
    assert retry["status"] == "FINISHED" and retry["tags.worker_pid"] != victim["tags.worker_pid"]
    assert "1 trials: 1 finished, 0 failed" in (tmp_path / "out.txt").read_text()


@pytest.mark.slow
def test_ctrl_c_cancels_the_sweep_and_leaves_no_run_running(ray_address, store, cache_dir, tmp_path):
    # Trials far longer than the test waits: they are cancelled a moment after the first one starts training.
    proc = popen_sweep(tmp_path, *TINY, "trainer.epochs=5000", "seed=0,1,2", f"tracking.uri={store}",
                       f"cache_dir={cache_dir}", f"hydra.launcher.address={ray_address}",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    wait_for_running_run(store)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=HANG_S) == 130
    runs = runs_of(store)
    assert len(runs) >= 1 and set(runs["status"]) == {"FAILED"}
    assert runs["tags.error"].str.contains("interrupted").all()
    out = (tmp_path / "out.txt").read_text()
    assert "3 trials: 0 finished, 0 failed, 0 skipped (already FINISHED), 3 cancelled" in out, out


@pytest.mark.slow
def test_eight_trials_logging_at_once_to_a_fresh_sqlite_store_lose_nothing(store, cache_dir, tmp_path):
    # The default: a local Ray instance started by the launcher; 2 CPUs / 0.25 per trial = eight at once.
    res = sweep(*TINY, "trainer.epochs=3", "seed=range(8)", "hydra.launcher.num_cpus=0.25",
                f"tracking.uri={store}", f"cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 0, res.stderr
    assert "8 trials: 8 finished" in res.stdout
    runs = runs_of(store)
    assert len(runs) == 8 and set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["params.seed"].astype(int)) == list(range(8))
    client = MlflowClient(store)
    for run_id in runs.run_id:
        assert [m.step for m in client.get_metric_history(run_id, "epoch_test_accuracy")] == [1, 2, 3]
        assert {"config.yaml", "environment.json", "selected_indices.npy"} <= {
            a.path for a in client.list_artifacts(run_id)}
    n_params = runs.filter(like="params.").notna().sum(axis=1)
    assert n_params.nunique() == 1  # every run holds every param
    # They really ran at once: some moment had several runs open.
    spans = [(r.start_time.value, r.end_time.value) for r in runs.itertuples()]
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert overlap >= 2


@pytest.mark.parametrize("override, message", [
    ("hydra.launcher.num_gpus=1.5", "hydra.launcher.num_gpus=1.5: expected a fraction below 1 or a whole number"),
    ("hydra.launcher.num_cpus=-1", "hydra.launcher.num_cpus=-1.0: expected a number >= 0"),
    ("hydra.launcher.nosuch=1", "Key 'nosuch' not in 'RayLauncherConf'"),
])
def test_bad_launcher_values_stop_before_ray_starts(override, message, store):
    res = sweep("seed=0,1", override, f"tracking.uri={store}")
    assert not Path(store.removeprefix("sqlite:///")).exists()  # stopped before any trial (or Ray) started
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and message in lines[0], res.stderr


@pytest.mark.slow
def test_an_address_where_no_cluster_answers_stops_the_sweep_with_one_line(store):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{s.getsockname()[1]}"
    res = sweep("seed=0,1", *TINY, f"tracking.uri={store}", address=free)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"winnow: error: hydra.launcher.address={free}: no Ray cluster answers there")
    assert runs_of(store).empty  # no trial ran


def test_a_cluster_that_wants_a_token_the_driver_does_not_send_says_what_to_set():
    """Ray (2.60) refuses a driver without the token this way: a ConnectionError caused by a RuntimeError whose text
    holds the AuthenticationError's traceback (seen against `ray start` with a token file and a driver given its
    address without RAY_AUTH_MODE=token)."""
    import socket
    import types

    import ray.exceptions

    from harness.errors import UserError
    from harness.launcher import _join

    def refuse(**_):
        try:
            raise RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call last):\n"
                               "ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication token "
                               "is missing or incorrect.")
        except RuntimeError as gcs:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6391") from gcs

    with socket.socket() as s:  # the cluster's port answers: the refusal comes from Ray, after the connection
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        fake_ray = types.SimpleNamespace(init=refuse, exceptions=ray.exceptions)
        with pytest.raises(UserError, match=rf"^hydra.launcher.address={address}: the cluster wants a token; "
                                            r"export RAY_AUTH_MODE=token"):
            _join(fake_ray, address, {})


def _load_mnist1d(cache: str) -> str:
    from harness.data.sources import MNIST1D

    return MNIST1D(num_samples=400).load(cache).fingerprint


def test_trials_building_the_same_cache_entry_at_once_all_get_it_whole(tmp_path):
    import multiprocessing as mp

    cache = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(4) as pool:
        prints = pool.map(_load_mnist1d, [cache] * 4)
    assert len(set(prints)) == 1
    files = sorted(p.name for p in (tmp_path / "cache" / "mnist1d").iterdir())
    assert len(files) == 1 and files[0].endswith(".npz") and ".tmp" not in files[0]  # no half-written leftovers
    assert _load_mnist1d(cache) == prints[0]
