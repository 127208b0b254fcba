"""The `npy` dataset source: X and y as .npy files, X read a batch at a time so a set larger than memory trains.

Bad files stop with one line naming the file; rows left in their file train exactly as the same rows in memory; a
trial's peak RSS stays far below the size of its training set; the content hash is cached by path, size and mtime.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import validate
from harness.data.npy import NPY
from harness.data.rows import FileRows
from harness.data.sources import Digits
from harness.data.validation import split_validation
from harness.errors import UserError
from harness.host_rows import HostRows, on_device
from harness.models import MLP
from harness.train import train
from strategies import Selection
from tests.conftest import REPO
from tests.test_train import trainer_cfg

KEYS = ("x_train", "y_train", "x_test", "y_test")


def write_digits(folder: Path, **replace: np.ndarray | bytes) -> dict[str, str]:
    """scikit-learn's digits as four .npy files in `folder` (an array or raw bytes in `replace` takes a file's
    place); returns the paths by key."""
    d = Digits().load("unused")
    arrays = {"x_train": d.x_train, "y_train": d.y_train, "x_test": d.x_test, "y_test": d.y_test, **replace}
    paths = {}
    for key, value in arrays.items():
        paths[key] = str(folder / f"{key}.npy")
        if isinstance(value, bytes):
            Path(paths[key]).write_bytes(value)
        else:
            np.save(paths[key], value, allow_pickle=True)
    return paths


def overrides(paths: dict[str, str], *extra: str) -> list[str]:
    return ["dataset=npy", *(f"dataset.{k}={p}" for k, p in paths.items()), *extra]


def truncated(folder: Path) -> bytes:
    np.save(folder / "full.npy", np.zeros((50, 64), np.float32))
    return (folder / "full.npy").read_bytes()[:-100]


def fortran(folder: Path) -> bytes:
    np.save(folder / "f.npy", np.asfortranarray(np.zeros((1438, 64), np.float32)))
    return (folder / "f.npy").read_bytes()


d0 = Digits().load("unused")
BAD = {  # case: (file key, replacement, fragment of the one line)
    "missing": ("y_test", None, "file not found"),
    "text": ("x_train", b"1,2,3\n4,5,6\n", "not an .npy file"),
    "npz": ("x_train", b"PK\x03\x04 an npz is a zip", "not an .npy file"),
    "rows differ": ("y_train", d0.y_train[:-1], "1437 labels, but dataset.x_train="),
    "float labels": ("y_train", d0.y_train.astype(np.float32), "labels of dtype float32; expected integer"),
    "negative label": ("y_test", np.where(np.arange(len(d0.y_test)) == 3, -1, d0.y_test), "label -1 at row 3"),
    "feature shapes": ("x_test", d0.x_test[:, :60], "samples of shape (60,), but dataset.x_train's are (64,)"),
    "complex": ("x_train", d0.x_train.astype(np.complex64), "dtype complex64 cannot be used"),
    "object": ("x_train", d0.x_train.astype(object), "dtype object cannot be used"),
    "strings": ("x_train", d0.x_train.astype("U3"), "dtype <U3 cannot be used"),
    "one-dimensional": ("x_train", d0.x_train[:, 0], "expected at least one row of features"),
    "truncated": ("x_train", truncated, "expected a complete file"),
    "fortran order": ("x_train", fortran, "Fortran order; expected C order"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_file_is_one_line_naming_it(tmp_path, case):
    key, replacement, fragment = BAD[case]
    if callable(replacement):
        replacement = replacement(tmp_path)
    paths = write_digits(tmp_path, **({} if replacement is None else {key: replacement}))
    if replacement is None:
        paths[key] = str(tmp_path / "absent.npy")
    source = NPY(**paths)
    with pytest.raises(UserError) as e:
        source.check()
    assert f"dataset.{key}={paths[key]}" in str(e.value) and fragment in str(e.value)
    assert "\n" not in str(e.value)
    assert source.peek() is None  # the preflight's model check then waits for the line above


def test_non_finite_features_name_the_first_row_at_load(tmp_path):
    x = d0.x_train.copy()
    x[7, 3] = np.nan
    paths = write_digits(tmp_path, x_train=x)
    NPY(**paths).check()  # headers and labels are fine: only reading the rows shows it
    with pytest.raises(UserError, match=r"x_train\.npy: NaN or infinite values \(first at row 7\); expected finite"):
        NPY(**paths).load(tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing cached for a file that failed


def test_the_cli_stops_a_bad_file_before_any_run(tmp_path):
    paths = write_digits(tmp_path, y_train=d0.y_train[:-1])
    proc = subprocess.run([sys.executable, "-m", "harness.run", *overrides(paths),
                           f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"winnow: error: dataset.y_train={paths['y_train']}: 1437 labels, but "
                                                f"dataset.x_train={paths['x_train']} has 1438 rows; expected one "
                                                "label per row"]
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the trial's run was opened


def test_preflight_checks_the_model_against_the_headers(tmp_path, compose_cfg):
    paths = write_digits(tmp_path, x_train=d0.x_train.reshape(-1, 8, 8), x_test=d0.x_test.reshape(-1, 8, 8))
    with pytest.raises(UserError, match=r"model=cnn1d does not fit dataset=npy: the model expects another input "
                                         r"than samples of shape \(8, 8\)"):
        validate(compose_cfg(*overrides(paths)))
    validate(compose_cfg(*overrides(paths, "model=mlp")))  # flattens any shape


def test_a_signal_of_every_row_in_memory_is_refused_before_compute(tmp_path, compose_cfg):
    paths = write_digits(tmp_path)
    with pytest.raises(UserError, match="dataset.in_memory=false: signal inputs is every training row in memory"):
        validate(compose_cfg(*overrides(paths, "strategy=exact_dedup")))
    validate(compose_cfg(*overrides(paths, "strategy=exact_dedup", "dataset.in_memory=true")))


def test_rows_are_never_loaded_whole_by_accident(tmp_path):
    data = NPY(**write_digits(tmp_path)).load(tmp_path / "cache")
    assert isinstance(data.x_train, FileRows) and isinstance(data.x_test, FileRows)
    with pytest.raises(UserError, match=r"x_train\.npy: a step asked for all 1,438 rows in memory"):
        np.ascontiguousarray(data.x_train, dtype=np.float32)  # what make_dataset would do
    # a copy sent to another process (a data-parallel worker) reopens the file instead of carrying the rows
    again = pickle.loads(pickle.dumps(data.x_train))
    assert len(pickle.dumps(data.x_train)) < 2000
    np.testing.assert_array_equal(again.take(np.array([9, 2, 3])), d0.x_train[[9, 2, 3]])


def test_features_of_any_numeric_dtype_are_read_as_float32(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)
    paths = write_digits(tmp_path, x_train=pixels, y_train=np.arange(40) % 3, x_test=pixels[:5].astype(">f8"),
                         y_test=np.arange(5) % 3)
    data = NPY(**paths).load(tmp_path / "cache")
    assert data.input_shape == (3, 4, 4) and data.num_classes == 3
    rows = data.x_train.take(np.array([5, 6, 7, 1]))
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, pixels[[5, 6, 7, 1]].astype(np.float32))
    np.testing.assert_array_equal(data.x_test[1:3], pixels[1:3].astype(np.float32))


def test_rows_in_the_file_train_exactly_as_in_memory(tmp_path):
    paths = write_digits(tmp_path)
    outcomes = []
    for in_memory in (False, True):
        data = NPY(**paths, in_memory=in_memory).load(tmp_path / "cache")
        torch.manual_seed(0)
        model = MLP(data.input_shape, 10)
        weights = np.linspace(0.5, 2, 1000)
        sel = Selection(np.random.default_rng(1).choice(len(data.y_train), 1000, replace=False), weights=weights)
        outcomes.append((data.fingerprint, train(model, data, sel, trainer_cfg(epochs=4), 0, torch.device("cpu"))))
    (fp_file, a), (fp_memory, b) = outcomes
    assert fp_file == fp_memory  # the same data, named the same
    assert a.train_loss == b.train_loss and a.test_accuracy == b.test_accuracy and a.final_test_accuracy > 0.85


def test_a_validation_split_holds_views_of_the_file(tmp_path):
    paths = write_digits(tmp_path)
    in_file = split_validation(NPY(**paths).load(tmp_path / "cache"), 0.1, seed=0)
    in_memory = split_validation(NPY(**paths, in_memory=True).load(tmp_path / "cache"), 0.1, seed=0)
    assert isinstance(in_file.x_train, FileRows) and isinstance(in_file.x_val, FileRows)
    np.testing.assert_array_equal(in_file.x_train.take(slice(None)), in_memory.x_train)
    np.testing.assert_array_equal(in_file.x_val.take(slice(None)), in_memory.x_val)
    whole = NPY(**paths).load(tmp_path / "cache")
    assert in_file.fingerprint != whole.fingerprint  # signals of the whole set are not served to the smaller one


def test_the_hash_is_cached_by_path_size_and_mtime(tmp_path):
    paths = write_digits(tmp_path)
    cache = tmp_path / "cache"
    source = NPY(**paths)
    assert source.prepare(cache) is True and source.prepare(cache) is False
    first = source.load(cache).fingerprint
    entries = sorted((cache / "npy").glob("*.json"))
    assert len(entries) == 2  # x_train and x_test; labels are hashed with the data set, 8 bytes a row
    for entry in entries:  # a load that reads the cache, not the file, sees a changed entry
        entry.write_text(json.dumps({**json.loads(entry.read_text()), "digest": "0" * 64}))
    assert source.load(cache).fingerprint != first

    x = d0.x_train.copy()
    x[0, 0] += 1
    np.save(paths["x_train"], x)  # same size; a later edit has a later mtime (set here: filesystems tick coarsely)
    later = os.stat(paths["x_train"]).st_mtime_ns + 10**9
    os.utime(paths["x_train"], ns=(later, later))
    changed = source.load(cache).fingerprint
    assert changed != first and len(list((cache / "npy").glob("*.json"))) == 3  # hashed afresh, a new entry


def write_rows(path: Path, means: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Class means plus noise, float32, written a chunk at a time (never whole in this process); returns labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(means), rows)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (rows, means.shape[1])})
        for start in range(0, rows, 8192):
            noise = rng.standard_normal((min(8192, rows - start), means.shape[1]), dtype=np.float32)
            (noise * 2 + means[y[start : start + 8192]]).tofile(f)
    return y


def trial_peak_rss(tmp_path: Path, paths: dict[str, str], name: str) -> tuple[int, str]:
    """Peak RSS in bytes (the kernel's ru_maxrss of that process alone) of a CLI trial, and its last output line."""
    log = tmp_path / f"{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "harness.run", *overrides(paths), "model=logistic",
                                 "trainer.epochs=1", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                 f"cache_dir={tmp_path / 'cache'}"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    lines = log.read_text().splitlines()
    assert status == 0, lines[-5:]
    return usage.ru_maxrss * 1024, lines[-1]


@pytest.mark.slow
def test_a_training_set_in_a_file_trains_without_its_size_in_memory(tmp_path):
    """A 512 MiB training set trains (one pass over every row, its content hash computed first) while the trial's
    peak RSS grows by a small fraction of that over the same trial on digits: on the 2-core VM 505 MiB against
    497 MiB (+8 MiB); a 586 MiB set read whole (dataset.in_memory=true) peaked at 1,601 MiB."""
    means = np.random.default_rng(99).standard_normal((10, 1024), dtype=np.float32) * 0.1
    big = {k: str(tmp_path / f"{k}.npy") for k in KEYS}
    np.save(big["y_train"], write_rows(Path(big["x_train"]), means, 131_072, seed=0))
    np.save(big["y_test"], write_rows(Path(big["x_test"]), means, 2000, seed=1))
    size = os.path.getsize(big["x_train"])
    (tmp_path / "digits").mkdir()
    baseline, _ = trial_peak_rss(tmp_path, write_digits(tmp_path / "digits"), "digits")
    peak, last = trial_peak_rss(tmp_path, big, "big")
    print(f"X {size / 2**20:.0f} MiB; peak RSS {peak / 2**20:.0f} MiB, digits trial {baseline / 2**20:.0f} MiB")
    accuracy = float(last.split("test_accuracy=")[1].split()[0])
    assert accuracy > 0.2  # it learned (10 classes)
    assert peak - baseline < 0.15 * size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pinned, non-blocking batch copies")
def test_batches_reach_the_gpu_intact_and_train_as_in_memory(tmp_path):
    paths = write_digits(tmp_path)
    device = torch.device("cuda")
    data = NPY(**paths).load(tmp_path / "cache")
    rows = HostRows(data.x_train, device)
    positions = torch.randperm(len(rows), device=device)[:300]
    batch = rows[positions]
    assert batch.device.type == "cuda"
    np.testing.assert_array_equal(batch.cpu().numpy(), d0.x_train[positions.cpu().numpy()])
    accuracies = []
    for in_memory in (False, True):
        torch.manual_seed(0)
        model = MLP(data.input_shape, 10)
        source = NPY(**paths, in_memory=in_memory).load(tmp_path / "cache")
        out = train(model, source, Selection(np.arange(len(d0.y_train))), trainer_cfg(epochs=3), 0, device)
        accuracies.append(out.final_test_accuracy)
    assert accuracies[0] > 0.85 and abs(accuracies[0] - accuracies[1]) <= 0.01  # same batches; GPU kernels may differ


def test_a_full_in_order_selection_is_the_trials_own_copy_on_the_cpu_and_whole_elsewhere():
    """A full-data trial skips the host gather off the CPU (one copy to the device, not two); on the CPU it still
    gathers, since the training tensor would otherwise share memory with the dataset."""
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    cpu = on_device(x, torch.device("cpu"), np.arange(6))
    cpu[0, 0] = -1.0
    assert x[0, 0] == 0.0 and torch.equal(cpu[1:], torch.from_numpy(x[1:]))
    assert on_device(x, torch.device("meta"), np.arange(6)).shape == (6, 2)  # meta: a device without data
    assert on_device(x, torch.device("meta"), np.array([5, 0])).shape == (2, 2)
