"""The Dataset record every source returns, its fingerprint and atomic caching."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.rows import FileRows


@dataclass(frozen=True)
class Dataset:
    """A train/test split: features float32, in memory or left in their file (`FileRows`, read a batch at a time by
    the `npy` source), labels int64 in memory."""

    name: str
    x_train: np.ndarray | FileRows
    y_train: np.ndarray
    x_test: np.ndarray | FileRows
    y_test: np.ndarray
    num_classes: int
    fingerprint: str
    # Set by label corruption (harness/data/corrupt.py): True where y_train differs from the clean label. The clean
    # labels stay in y_train_clean so analyses can ask which samples a strategy kept or dropped.
    noisy: np.ndarray | None = None
    y_train_clean: np.ndarray | None = None
    # Set by `dataset.val_fraction` (harness/data/validation.py): a held-out part of the original training set,
    # never trained on; `val_indices` are its rows in the original training set (the rest, in order, is x_train).
    x_val: np.ndarray | FileRows | None = None
    y_val: np.ndarray | None = None
    val_indices: np.ndarray | None = None
    # Ground truth of the corruptions (harness/data/corrupt.py), over the training rows as they are after them:
    # {kind: bool mask} for label_noise, exact_duplicates, near_duplicates, outliers (kinds applied only);
    # duplicate_of: the row an appended copy was made from, -1 elsewhere (set when any corruption ran).
    corruptions: dict[str, np.ndarray] = field(default_factory=dict, hash=False)
    duplicate_of: np.ndarray | None = None
    # `corruption.imbalance_rho`: rows of the training set before corruption that were removed (sorted), and how many
    # of each class.
    imbalance_dropped: np.ndarray | None = None
    imbalance_dropped_per_class: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def fingerprint(*arrays: np.ndarray | FileRows) -> str:
    """sha256 over dtype, shape and bytes of each array: names the data's content, not its path. Rows left in their
    file contribute the file's cached content hash and which rows (reading every byte is what they avoid)."""
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, FileRows):
            h.update(f"file{a.shape}{a.content_digest}".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dataset(name: str, x_train, y_train, x_test, y_test, num_classes: int | None = None) -> Dataset:
    """Cast to the harness's dtypes, fingerprint the result."""
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    y_train = np.ascontiguousarray(y_train, dtype=np.int64)
    y_test = np.ascontiguousarray(y_test, dtype=np.int64)
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    fp = fingerprint(x_train, y_train, x_test, y_test)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, fp)
