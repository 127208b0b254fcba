"""Embeddings computed elsewhere, read from `embeddings.path` for `strategy.embedding=file`
(harness/signals/embeddings_file.py, wired in harness/config.py and harness/select.py): the file is checked (row
count, finite values), its rows follow the training set, and the embedding strategies select on them exactly as
they would on the same vectors handed over directly, with no probe trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from harness.build import build_strategy
from harness.config import config_hash, validate
from harness.data.base import Dataset, fingerprint, make_dataset
from harness.data.validation import split_validation
from harness.errors import UserError
from harness.meters import Meter
from harness.seeding import numpy_rng
from harness.select import run_selection
from harness.signals.embeddings_file import check_embeddings_file, load_embeddings
from strategies.base import SelectionContext
from strategies.coresets import KCenterGreedy
from strategies.dedup import SemDeDup
from strategies.pipeline import Pipeline
from tests.conftest import run_cli, runs_of

N = 120


def vectors(n: int = N, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Clustered embeddings with near-duplicates: 10 centres, each row a centre plus small noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim))
    return (centres[rng.integers(0, 10, n)] + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)


def toy_data(n: int = N) -> Dataset:
    rng = np.random.default_rng(1)
    return make_dataset("toy", rng.normal(size=(n, 5)), np.arange(n) % 3, rng.normal(size=(9, 5)), np.arange(9) % 3)


def save(tmp_path: Path, array: np.ndarray, name: str = "emb.npy") -> str:
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


class FakeRun:
    """What run_selection records, kept in memory instead of MLflow."""

    def __init__(self) -> None:
        self.tag_values: dict = {}
        self.metric_values: dict = {}

    def tags(self, tags) -> None:
        self.tag_values.update(tags)

    def metrics(self, values, step: int = 0) -> None:
        self.metric_values.update(values)

    def artifact_array(self, name, array) -> None:
        pass


def trial_selection(cfg, data: Dataset, tmp_path: Path) -> tuple[np.ndarray, FakeRun]:
    """The trial's selection step (harness/select.py) as run_trial calls it; returns the kept indices."""
    run = FakeRun()
    meter = Meter("cpu", watts_per_core=None, powercap_root=tmp_path)
    selection = run_selection(cfg, build_strategy(cfg), data, torch.device("cpu"), meter, run)
    return selection.indices, run


def context(labels: np.ndarray, fraction: float, signals: dict, seed: int = 0) -> SelectionContext:
    """The context harness.select builds, with the same seeded generator."""
    return SelectionContext(np.arange(len(labels)), labels, 3, fraction, numpy_rng(seed, "selection"), signals)


def test_wrong_row_count_is_one_line_naming_both_counts_and_the_file(tmp_path):
    path = save(tmp_path, vectors(N - 1))
    with pytest.raises(UserError) as e:
        load_embeddings(path, toy_data())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"embeddings.path={path}: {N - 1} rows, but the training set has {N}")


def test_non_finite_values_are_rejected_naming_the_first_row(tmp_path):
    emb = vectors()
    emb[7, 3], emb[9, 0] = np.nan, np.inf
    path = save(tmp_path, emb)
    with pytest.raises(UserError, match=r"2 rows with NaN or infinite values \(first: row 7\); expected finite"):
        load_embeddings(path, toy_data())


@pytest.mark.parametrize("content, message", [
    (np.zeros(N, np.float32), "a float32 array of shape (120,); expected a 2-D float array"),
    (np.zeros((N, 4), np.int64), "a int64 array of shape (120, 4); expected a 2-D float array"),
    (np.array([{"a": 1}], dtype=object), "not a readable .npy file"),
    (b"rows,features\n1,2\n", "not a readable .npy file"),
])
def test_malformed_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "emb.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(UserError) as e:
        check_embeddings_file(str(path), None)
    assert str(e.value).startswith(f"embeddings.path={path}: ") and message in str(e.value)


def test_semdedup_on_the_file_equals_semdedup_on_the_same_vectors(tmp_path, compose_cfg):
    emb = vectors()
    path = save(tmp_path, emb)
    cfg = compose_cfg("strategy=semdedup", "strategy.embedding=file", f"embeddings.path={path}",
                      "strategy.n_clusters=5", f"cache_dir={tmp_path / 'cache'}")
    kept, run = trial_selection(cfg, toy_data(), tmp_path)
    data = toy_data()
    direct = SemDeDup(n_clusters=5).select(context(data.y_train, 0.5, {"embeddings": emb}))
    assert np.array_equal(kept, direct.indices) and len(kept) == N // 2
    assert run.tag_values["embedding"] == "file" and run.tag_values["embeddings_fingerprint"] == fingerprint(emb)
    assert "probe_test_accuracy" not in run.metric_values and not (tmp_path / "cache").exists()  # no probe trained


def test_pipeline_on_the_file_equals_the_stages_on_the_same_vectors(tmp_path, compose_cfg):
    emb = vectors()
    path = save(tmp_path, emb)
    cfg = compose_cfg("strategy=pipeline", "strategy.fraction=0.3", f"embeddings.path={path}",
                      "strategy.pipeline=[{name:semdedup,embedding:file,eps:0.002,n_clusters:5},"
                      "{name:kcenter,embedding:file}]")
    kept, run = trial_selection(cfg, toy_data(), tmp_path)
    data = toy_data()
    direct = Pipeline([SemDeDup(n_clusters=5, eps=0.002), KCenterGreedy()]).select(
        context(data.y_train, 0.3, {"embeddings": emb}))
    assert np.array_equal(kept, direct.indices) and len(kept) == round(0.3 * N)
    assert run.metric_values["stage1_semdedup_removed"] > 0  # the dedup stage did find near-duplicates
    assert run.tag_values["embedding"] == "file"


def test_validation_split_takes_the_rows_of_the_remaining_training_set(tmp_path):
    emb = vectors()
    path = save(tmp_path, emb)
    data = split_validation(toy_data(), 0.2, seed=0)
    rows = load_embeddings(path, data).rows
    keep = np.setdiff1d(np.arange(N), data.val_indices)
    assert len(rows) == len(data.y_train) == N - len(data.val_indices) and np.array_equal(rows, emb[keep])


def test_preflight_counts_rows_when_the_source_can(tmp_path, compose_cfg):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((4, 4, 3), 30 * i, np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
    path = save(tmp_path, vectors(5))
    cfg = compose_cfg("dataset=image_folder", f"dataset.train_dir={tmp_path / 'img'}", "dataset.test_fraction=0.25",
                      "dataset.image_size=[4,4]", "model=mlp", "strategy=kcenter", "strategy.embedding=file",
                      f"embeddings.path={path}", "dataset.val_fraction=0.5", f"cache_dir={tmp_path / 'cache'}")
    with pytest.raises(UserError, match=f"embeddings.path={path}: 5 rows, but the training set has 6"):
        validate(cfg)  # the original training set's rows: val_fraction holds some out later, the file has all


def test_file_strategy_needs_the_path(compose_cfg):
    with pytest.raises(UserError, match="embeddings.path is null: strategy=kcenter reads embedding=file"):
        validate(compose_cfg("strategy=kcenter", "strategy.embedding=file"))


def test_unset_path_leaves_trial_identities_as_they_were(compose_cfg):
    cfg = compose_cfg("strategy=kcenter")
    without = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "embeddings"])  # a config from before the section
    assert config_hash(cfg) == config_hash(without)
    a = config_hash(compose_cfg("strategy=kcenter", "strategy.embedding=file", "embeddings.path=/x/a.npy"))
    b = config_hash(compose_cfg("strategy=kcenter", "strategy.embedding=file", "embeddings.path=/x/b.npy"))
    assert a != b


@pytest.mark.slow
def test_a_trial_selects_on_the_file_and_records_it(tmp_path, store, cache_dir):
    from harness.data.sources import Digits

    emb = Digits().load(cache_dir).x_train  # raw pixels as the "encoder": rows follow the training set
    path = save(tmp_path, emb)
    res = run_cli("dataset=digits", "model=mlp", "strategy=kcenter", "strategy.embedding=file", "strategy.fraction=0.2",
                  f"embeddings.path={path}", "trainer.epochs=2", f"tracking.uri={store}", f"cache_dir={cache_dir}",
                  f"hydra.run.dir={tmp_path / 'out'}")
    assert res.returncode == 0, res.stderr
    run = runs_of(store).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.embedding"] == "file"
    assert run["tags.embeddings_fingerprint"] == fingerprint(emb.astype(np.float32))
    assert "metrics.probe_test_accuracy" not in run or np.isnan(run["metrics.probe_test_accuracy"])


@pytest.mark.parametrize("dataset, overrides", [
    ("mnist1d", ["dataset.num_samples=1234", "dataset.train_split=0.7"]),
    ("digits", ["dataset.test_fraction=0.3"]),
])
def test_built_in_sources_count_their_training_rows_before_generating(dataset, overrides, compose_cfg, tmp_path):
    """The preflight's row check needs the count before any data exists: it equals the rows `load` then gives."""
    from harness.build import build_dataset

    source = build_dataset(compose_cfg(f"dataset={dataset}", *overrides))
    expected = source.train_rows(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing generated or cached to count them
    assert expected == len(source.load(tmp_path).y_train)


def test_npz_rows_come_from_the_header_and_a_wrong_file_stops_the_preflight(tmp_path, compose_cfg, write_npz):
    path = write_npz("d.npz")
    emb = save(tmp_path, vectors(3))
    cfg = compose_cfg("dataset=npz", f"dataset.path={path}", "strategy=kcenter", "strategy.embedding=file",
                      f"embeddings.path={emb}")
    with np.load(path) as z:
        n = len(z["X_train"])
    with pytest.raises(UserError, match=f"embeddings.path={emb}: 3 rows, but the training set has {n}"):
        validate(cfg)
