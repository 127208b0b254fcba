"""Provenance: a real tiny run's selection exported in every format and read back against its data; the loader
refuses other data; the exporter's bad inputs; the dataset card's counts, hand-computed, and its determinism."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from harness.card import card_json, dataset_card
from harness.data.base import Dataset, make_dataset
from harness.data.corrupt import add_label_noise
from harness.data.sources import NPZ
from harness.data.validation import split_validation
from harness.errors import UserError
from harness.export import FORMATS, export, indices_sha256, main, sidecar_path, write_export
from harness.exported import load_export, read_export
from tests.conftest import make_npz, run_cli, runs_of


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: str) -> dict:
    """One real trial (npz data, random half, one epoch), shared by this module's tests: its store, run, data."""
    tmp = tmp_path_factory.mktemp("export_run")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    path = make_npz(tmp / "data.npz", n_train=40, n_test=12)
    res = run_cli("dataset=npz", f"dataset.path={path}", "model=mlp", "trainer.epochs=1", "strategy=random",
                  "strategy.fraction=0.5", "seed=3", f"tracking.uri={store}", f"cache_dir={cache_dir}")
    assert res.returncode == 0, res.stderr
    row = runs_of(store).iloc[0]
    client = MlflowClient(store)
    with tempfile.TemporaryDirectory() as d:  # what the trial recorded as its selection
        selected = np.load(client.download_artifacts(row.run_id, "selected_indices.npy", d))
    data = NPZ(path).load(cache_dir)  # no validation split, no noise: the data the trial trained on
    return {"store": store, "run": row, "selected": selected, "data": data, "tmp": tmp}


def export_cli(*args: str):
    return run_cli(*args, module="harness.export")


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_round_trips_the_runs_selection(tiny_run, tmp_path, fmt):
    run = tiny_run["run"]
    out = tmp_path / f"sel.{fmt}"
    res = export_cli(run.run_id, "--format", fmt, "--out", str(out), "--tracking-uri", tiny_run["store"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"{out}: 20 of 40 indices, strategy random fraction 0.5, run {run.run_id}")

    data = tiny_run["data"]
    assert data.fingerprint == run["tags.dataset_fingerprint"]
    indices = load_export(out, data)
    np.testing.assert_array_equal(indices, tiny_run["selected"])
    assert indices.dtype == np.int64 and len(indices) == run["metrics.n_selected"] == 20
    meta = read_export(out).meta
    assert indices_sha256(indices) == meta["selected_indices_sha256"] == run["tags.selected_indices_sha256"]
    assert (meta["run_id"], meta["dataset_fingerprint"], meta["config_hash"], meta["strategy"], meta["fraction"]) == (
        run.run_id, run["tags.dataset_fingerprint"], run["tags.config_hash"], "random", 0.5)
    assert meta["weighted"] is False and load_export(out, data, with_weights=True)[1] is None
    # the trial's dataset card travels with the export: the card of the data it trained on
    card = meta["dataset_card"]
    assert card["fingerprint"] == data.fingerprint and card["sizes"]["n_train"] == 40 and card["sizes"]["n_test"] == 12
    # a fingerprint alone will do; the range check then uses the run's n_train
    np.testing.assert_array_equal(load_export(out, data.fingerprint), tiny_run["selected"])


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_weights_round_trip_exactly(tiny_run, tmp_path):
    # No static strategy gives weights today (CRAIG's and GradMatch's live in training's rounds), so this is a copy of
    # the real run with `selected_weights.npy` added by hand, as harness/select.py logs it for a weighted Selection.
    client = MlflowClient(tiny_run["store"])
    src = tiny_run["run"]
    rid = client.create_run(src.experiment_id, tags={k[5:]: v for k, v in src.items()
                                                     if k.startswith("tags.") and isinstance(v, str)}).info.run_id
    weights = np.random.default_rng(0).uniform(0.1, 5.0, size=len(tiny_run["selected"]))
    for name, array in (("selected_indices.npy", tiny_run["selected"]), ("selected_weights.npy", weights)):
        np.save(tmp_path / name, array)
        client.log_artifact(rid, str(tmp_path / name))
    card = {"fingerprint": tiny_run["data"].fingerprint, "sizes": {"n_train": 40, "n_test": 12}}
    client.log_text(rid, card_json(card), "dataset_card.json")  # likewise proposed for harness/trial.py
    client.log_metric(rid, "n_train", src["metrics.n_train"])
    client.set_terminated(rid)
    for fmt in FORMATS:
        out = tmp_path / f"w.{fmt}"
        main([rid, "--format", fmt, "--out", str(out), "--tracking-uri", tiny_run["store"]])
        indices, got = load_export(out, tiny_run["data"], with_weights=True)
        np.testing.assert_array_equal(indices, tiny_run["selected"])
        np.testing.assert_array_equal(got, weights)  # bit for bit: csv writes 17 digits, json a float's repr
        assert read_export(out).meta["dataset_card"] == card


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_load_refuses_data_with_another_fingerprint(tiny_run, tmp_path):
    out = tmp_path / "sel.csv"
    export(tiny_run["run"].run_id, "csv", out, tiny_run["store"])
    other = NPZ(make_npz(tmp_path / "other.npz", n_train=40, n_test=12, shift=0.5)).load(tmp_path / "cache")
    with pytest.raises(UserError) as e:
        load_export(out, other)
    assert str(e.value) == (f"{out}: exported for dataset fingerprint {tiny_run['data'].fingerprint}; this data has "
                            f"fingerprint {other.fingerprint}")


@pytest.mark.parametrize("indices, message", [
    (np.array([0, 5, 40]), "index 40 is outside the training set of 40 rows"),
    (np.array([-1, 5]), "index -1 is outside the training set of 40 rows"),
    (np.array([3, 5, 3]), "1 repeated indices; a selection is unique rows"),
])
@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_load_refuses_indices_out_of_range_or_repeated(tiny_run, tmp_path, indices, message):
    out = tmp_path / "bad.jsonl"
    write_export(out, "jsonl", indices, None, {"dataset_fingerprint": tiny_run["data"].fingerprint, "n_train": 40})
    with pytest.raises(UserError, match=f"^{out}: {message}$"):
        load_export(out, tiny_run["data"])


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_load_refuses_a_file_edited_after_export(tiny_run, tmp_path):
    out = tmp_path / "sel.npy"
    export(tiny_run["run"].run_id, "npy", out, tiny_run["store"])
    assert sidecar_path(out).is_file()
    np.save(out, np.sort(tiny_run["selected"])[::-1].copy())  # same rows, another order: another training order
    with pytest.raises(UserError, match=f"^{out}: indices hash to .*; the file was changed after export$"):
        load_export(out, tiny_run["data"])


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
@pytest.mark.parametrize("case", ["unknown run", "no indices", "unknown format", "unwritable path", "no run id"])
def test_cli_bad_inputs_exit_non_zero_with_one_line(tiny_run, tmp_path, capsys, case):
    store, rid = tiny_run["store"], tiny_run["run"].run_id
    if case == "no indices":  # a run that ended before selection (no artifact)
        client = MlflowClient(store)
        rid = client.create_run(tiny_run["run"].experiment_id, tags={"dataset_fingerprint": "x"}).info.run_id
        client.set_terminated(rid, status="FAILED")
    argv = {"unknown run": ["0" * 32, "--tracking-uri", store],
            "no indices": [rid, "--tracking-uri", store],
            "unknown format": [rid, "--format", "parquet", "--tracking-uri", store],
            "unwritable path": [rid, "--out", str(tmp_path / "missing" / "x.npy"), "--tracking-uri", store],
            "no run id": []}[case]
    expected = {"unknown run": f"run {'0' * 32}: not found in {store}",
                "no indices": f"run {rid}: has no selected_indices.npy artifact (status FAILED); expected a run "
                              "that reached selection, recorded by harness.trial",
                "unknown format": "--format parquet: unknown; expected one of npy, csv, jsonl",
                "unwritable path": f"{tmp_path / 'missing' / 'x.npy'}: cannot write (No such file or directory)",
                "no run id": "the following arguments are required: run_id"}[case]
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    err = capsys.readouterr().err
    assert err == f"winnow-export: error: {expected}\n"


# The card: a 10-row training set (3 of class 0, 2 of class 1, 5 of class 2), 4 test rows (1, 2, 1).
Y_TRAIN = np.array([0, 2, 1, 0, 2, 2, 1, 0, 2, 2])
Y_TEST = np.array([2, 1, 0, 1])


def tiny_data() -> Dataset:
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    return make_dataset("npz", x, Y_TRAIN, x[:4] + 0.5, Y_TEST, num_classes=3)


def test_card_counts_a_tiny_dataset(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=npz", f"dataset.path={tmp_path / 'd.npz'}", "seed=7")
    data = tiny_data()
    card = dataset_card(cfg, data, audit={"exact_duplicates": np.int64(0)})
    assert card["sizes"] == {"n_train": 10, "n_test": 4}
    assert card["class_counts"] == {"train": [3, 2, 5], "test": [1, 2, 1]}
    assert (card["name"], card["fingerprint"], card["input_shape"], card["num_classes"]) == (
        "npz", data.fingerprint, [3], 3)
    assert card["source"] == {"kind": "NPZ", "target": "harness.data.sources.NPZ",
                              "paths": {"path": str(tmp_path / "d.npz")}, "settings": {}, "val_fraction": None}
    # every corruption.* value as configured (the group is growing; compared whole, not key by key)
    assert card["corruption"] == {"config": OmegaConf.to_container(cfg.corruption), "seed": 7, "kinds": {}}
    assert card["corruption"]["config"]["label_noise"] == 0.0
    assert card["audit"] == {"exact_duplicates": 0}
    assert card_json(card) == card_json(dataset_card(cfg, tiny_data(), audit={"exact_duplicates": np.int64(0)}))
    assert json.loads(card_json(card)) == card


def test_card_after_validation_split_and_label_noise(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=npz", f"dataset.path={tmp_path / 'd.npz'}", "dataset.val_fraction=0.2",
                      "corruption.label_noise=0.25", "seed=7")
    # as the trial prepares it: round(0.2 x count) per class held out -> 1 of class 0, 0 of class 1, 1 of class 2
    data = add_label_noise(split_validation(tiny_data(), 0.2, 7), 0.25, 7)
    card = dataset_card(cfg, data)
    assert card["sizes"] == {"n_train": 8, "n_test": 4, "n_val": 2}
    assert card["class_counts"]["val"] == [1, 0, 1]
    assert card["class_counts"]["test"] == [1, 2, 1]
    assert sum(card["class_counts"]["train"]) == 8
    assert card["corruption"]["config"]["label_noise"] == 0.25
    assert card["corruption"]["kinds"] == {
        "label_noise": {"stream": "corruption", "count": 2, "fraction": 0.25}}  # round(0.25 x 8)
    assert card["fingerprint"] == data.fingerprint != tiny_data().fingerprint
    assert card_json(card) == card_json(dataset_card(cfg, add_label_noise(split_validation(tiny_data(), 0.2, 7),
                                                                          0.25, 7)))


_EXTRA = ("corruptions", "duplicate_of", "imbalance_dropped", "imbalance_dropped_per_class")


@dataclasses.dataclass(frozen=True)
class _CorruptedDataset(Dataset):
    """Declares the ground-truth fields of harness/data/corrupt.py itself, so this test holds with or without them
    in Dataset (being added there for issue 15)."""

    corruptions: dict | None = None
    duplicate_of: np.ndarray | None = None
    imbalance_dropped: np.ndarray | None = None
    imbalance_dropped_per_class: np.ndarray | None = None


def test_card_counts_each_corruption_mask_and_duplicates(compose_cfg, tmp_path):
    cfg = compose_cfg("dataset=npz", f"dataset.path={tmp_path / 'd.npz'}", "seed=1")
    base = tiny_data()
    dup = np.full(10, -1)
    dup[[8, 9]] = [1, 4]  # rows 8 and 9 were appended as copies of rows 1 and 4
    data = _CorruptedDataset(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Dataset)
                                if f.name not in _EXTRA},
                             corruptions={"exact_duplicates": dup >= 0, "outliers": np.arange(10) == 7},
                             duplicate_of=dup, imbalance_dropped=np.array([2, 5, 11]),
                             imbalance_dropped_per_class=np.array([0, 1, 2]))
    card = dataset_card(cfg, data)["corruption"]
    assert card["kinds"] == {
        "exact_duplicates": {"stream": "corruption/exact_duplicates", "count": 2, "fraction": 0.2},
        "outliers": {"stream": "corruption/outliers", "count": 1, "fraction": 0.1},
        "imbalance_rho": {"stream": "corruption/imbalance_rho", "dropped": 3, "dropped_per_class": [0, 1, 2]}}
    assert card["n_copies"] == 2 and card["seed"] == 1


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_card_of_the_runs_data_carries_the_runs_fingerprint(tiny_run, compose_cfg):
    cfg = compose_cfg("dataset=npz", f"dataset.path={tiny_run['tmp'] / 'data.npz'}", "seed=3")
    card = dataset_card(cfg, tiny_run["data"])
    assert card["fingerprint"] == tiny_run["run"]["tags.dataset_fingerprint"]
    assert card["sizes"] == {"n_train": 40, "n_test": 12} and sum(card["class_counts"]["train"]) == 40


@pytest.mark.slow  # shares one real trial (about 10 s): the full suite
def test_export_of_a_run_is_path_independent(tiny_run, tmp_path):
    """Two exports of one run agree whatever the output's name: the metadata holds no path or time."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        export(tiny_run["run"].run_id, "jsonl", out, tiny_run["store"])
    assert Path(a).read_text() == Path(b).read_text()
