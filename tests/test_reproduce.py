"""Reproduction: a real tiny CPU trial re-run from its record; changed data; the comparison rules."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from harness.reproduce import EXIT_DATA_CHANGED, EXIT_DIFFERS, EXIT_OK, EXIT_USER, compare, main, report_text, within
from tests.conftest import HANG_S, REPO, run_cli, runs_of


def reproduce_cli(run_id: str, store: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.reproduce", run_id, "--tracking-uri", store], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG_S, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_a_finished_cpu_run_reproduces(store, cache_dir):
    res = run_cli("dataset=digits", "model=mlp", "trainer.epochs=2", "strategy=random", "strategy.fraction=0.5",
                  "seed=3", f"tracking.uri={store}", f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    original = runs_of(store).iloc[0]

    rep = reproduce_cli(original.run_id, store)
    assert rep.returncode == EXIT_OK, rep.stdout + rep.stderr
    assert rep.stdout.strip().splitlines()[-1] == "REPRODUCED"
    runs = runs_of(store)
    new = runs[runs["tags.reproduction_of"] == original.run_id]
    assert len(new) == 1 and new.iloc[0]["status"] == "FINISHED"
    new = new.iloc[0]
    assert new["metrics.test_accuracy"] == original["metrics.test_accuracy"]
    assert new["tags.selected_indices_sha256"] == original["tags.selected_indices_sha256"]
    assert new["tags.dataset_fingerprint"] == original["tags.dataset_fingerprint"]
    assert f"ok    test_accuracy              {original['metrics.test_accuracy']:.10g}" in rep.stdout


@pytest.mark.slow
def test_changed_data_is_reported_with_a_non_zero_exit(store, tmp_path, write_npz):
    path = write_npz(n_train=60)
    res = run_cli("dataset=npz", f"dataset.path={path}", "model=mlp", "trainer.epochs=2", f"tracking.uri={store}",
                  f"cache_dir={tmp_path / 'cache'}")
    assert res.returncode == 0, res.stderr
    original = runs_of(store).iloc[0]
    write_npz(n_train=60, shift=0.5)  # same shapes and labels, different values

    rep = reproduce_cli(original.run_id, store)
    assert rep.returncode == EXIT_DATA_CHANGED, rep.stdout + rep.stderr
    new_fp = runs_of(store).query("`tags.reproduction_of` == @original.run_id").iloc[0]["tags.dataset_fingerprint"]
    assert new_fp != original["tags.dataset_fingerprint"]
    assert rep.stdout.strip().splitlines()[-1] == (
        f"DATA CHANGED: dataset fingerprint {original['tags.dataset_fingerprint']} -> {new_fp}: "
        f"the data differs from what run {original.run_id} trained on")


def _synthetic_run(client: MlflowClient, exp: str, device: str, metrics: dict, fingerprint: str = "fp1",
                   threads: str = "2", **extra_tags: str):
    tags = {"device": device, "dataset_fingerprint": fingerprint, "config_hash": "c1", "selected_indices_sha256": "i1",
            "torch_threads": threads, **extra_tags}
    rid = client.create_run(exp).info.run_id
    client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(rid)
    return client.get_run(rid)


BASE = {"test_accuracy": 0.900, "n_selected": 1000.0, "epoch_train_loss": 0.30, "total_s": 10.0}


@pytest.mark.parametrize("device, change, exit_code, differs", [
    ("cpu", {}, EXIT_OK, []),
    ("cpu", {"total_s": 14.0}, EXIT_OK, []),  # a measured cost may vary: never compared
    ("cpu", {"test_accuracy": 0.9001}, EXIT_DIFFERS, ["test_accuracy"]),  # CPU: equal or not reproduced
    ("cuda:0", {"test_accuracy": 0.905, "epoch_train_loss": 0.31}, EXIT_OK, []),  # within 1 point, 5%
    ("cuda:0", {"test_accuracy": 0.885}, EXIT_DIFFERS, ["test_accuracy"]),  # 1.5 points off
    ("cuda:0", {"n_selected": 999.0}, EXIT_DIFFERS, ["n_selected"]),  # counts are exact on any device
])
def test_compare_applies_the_device_tolerance(store, device, change, exit_code, differs):
    client = MlflowClient(store)
    exp = client.create_experiment("cmp")
    a = _synthetic_run(client, exp, device, BASE)
    b = _synthetic_run(client, exp, device, {**BASE, **change})
    c = compare(client, a, b)
    assert c.exit_code == exit_code and c.differences == differs and not c.data_changed


def test_compare_flags_a_fingerprint_change_as_data_changed(store):
    client = MlflowClient(store)
    exp = client.create_experiment("cmp")
    c = compare(client, _synthetic_run(client, exp, "cpu", BASE), _synthetic_run(client, exp, "cpu", BASE, "fp2"))
    assert c.data_changed and c.exit_code == EXIT_DATA_CHANGED and c.changed_data == ["dataset fingerprint fp1 -> fp2"]


def test_a_changed_embeddings_file_is_data_changed_and_named(store):
    """A selection on embedding=file read a file outside the dataset: the same data with another embeddings file is
    not a reproduction, and the report says which input changed."""
    client = MlflowClient(store)
    exp = client.create_experiment("cmp")
    a = _synthetic_run(client, exp, "cpu", BASE, embeddings_fingerprint="e1")
    same = compare(client, a, _synthetic_run(client, exp, "cpu", BASE, embeddings_fingerprint="e1"))
    assert same.exit_code == EXIT_OK and "embeddings_fingerprint" in "".join(same.lines)
    c = compare(client, a, _synthetic_run(client, exp, "cpu", BASE, embeddings_fingerprint="e2"))
    assert c.exit_code == EXIT_DATA_CHANGED and c.changed_data == ["embeddings fingerprint e1 -> e2"]
    assert "DATA CHANGED: embeddings fingerprint e1 -> e2" in report_text(a.info.run_id, c)


def test_within_tolerance_edges():
    assert within("test_accuracy", 0.90, 0.91, gpu=True) and not within("test_accuracy", 0.90, 0.9101, gpu=True)
    assert not within("test_accuracy", 0.90, 0.90 + 1e-9, gpu=False)


def test_counts_decided_from_losses_get_the_gpu_tolerance_only_for_dynamic_runs():
    # a static selection fixes steps exactly on any device; InfoBatch's plans follow the losses, so on a GPU
    # its step count may move with the numerics (within 5%), while on the CPU it must still be equal
    assert not within("steps", 6000, 6001, gpu=True)
    assert within("steps", 6000, 6001, gpu=True, dynamic=True)
    assert within("samples_seen", 40000, 40100, gpu=True, dynamic=True)
    assert not within("steps", 6000, 6001, gpu=False, dynamic=True)
    assert not within("n_selected", 4000, 4001, gpu=True, dynamic=True)
    assert not within("samples_seen", 40000, 40100, gpu=True)  # a static selection fixes them exactly
    assert within("epochs", 26, 27, gpu=True, dynamic=True)  # a steps budget: epochs follow the plans


def test_unknown_run_is_one_line_and_exit_2(store, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["0123456789abcdef", "--tracking-uri", store])
    assert exc.value.code == EXIT_USER
    assert capsys.readouterr().err.strip().splitlines() == [
        f"winnow-reproduce: error: run 0123456789abcdef: not found in {store}"]


def test_compare_flags_other_numerics_and_ignores_circumstances(store):
    client = MlflowClient(store)
    exp = client.create_experiment("cmp")
    a = _synthetic_run(client, exp, "cpu", {**BASE, "cache_hit": 0.0})
    warm = compare(client, a, _synthetic_run(client, exp, "cpu", {**BASE, "cache_hit": 1.0}))
    assert warm.exit_code == EXIT_OK and any("cache_hit" in line and "not compared" in line for line in warm.lines)
    other = compare(client, a, _synthetic_run(client, exp, "cpu", {**BASE, "cache_hit": 0.0}, threads="1"))
    assert other.exit_code == EXIT_DIFFERS and other.differences == ["torch_threads"]
