"""The `npy` dataset source: features and labels as four .npy files, the features never loaded whole.

X files stay where they are and are read a batch at a time (`FileRows`, harness/data/rows.py), so a training set
larger than memory trains; `in_memory: true` reads them whole instead (faster when they fit). Labels are read into
memory (8 bytes a row). Every check reads file headers and labels only. An X file's content hash is computed once,
CHUNK_BYTES at a time, and cached in `cache_dir/npy/` under its path, size and modification time, so a sweep's
trials (and later sweeps) do not reread gigabytes to name the data; a changed file is hashed afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, atomic_write_text, fingerprint
from harness.data.rows import FileRows
from harness.data.sources import Source
from harness.errors import UserError

KEYS = ("x_train", "y_train", "x_test", "y_test")
FEATURE_KINDS = "biuf"  # bool, signed and unsigned integers, floats: all cast to float32 when read
CHUNK_BYTES = 64 << 20  # hashing reads this much at a time
CACHE_VERSION = 1  # bump when the digest changes, so old cache entries are not read
SAVE_HINT = "an array saved with numpy.save"


@dataclass(frozen=True)
class Header:
    """What an .npy header says: shape, dtype, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int


def read_header(key: str, path: str) -> Header:
    """`dataset.<key>`'s header, checked: an .npy file, C order, as long as the header says. Raises UserError."""
    if not path:
        raise UserError(f"dataset.{key} is empty: expected the path of an .npy file")
    where = f"dataset.{key}={path}"
    if not Path(path).is_file():
        raise UserError(f"{where}: file not found; expected an .npy file ({SAVE_HINT})")
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise UserError(f"{where}: not an .npy file (no NumPy header at its start); expected {SAVE_HINT}") from None
        try:
            if version not in ((1, 0), (2, 0)):  # 3.0 exists only for structured dtypes, unusable here anyway
                raise ValueError(f"format version {version[0]}.{version[1]}")
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError as e:
            raise UserError(f"{where}: unreadable .npy header ({e}); expected {SAVE_HINT}") from None
        offset = f.tell()
    if fortran and len(shape) > 1:  # rows would not be contiguous in the file
        raise UserError(f"{where}: stored in Fortran order; expected C order (numpy.save(path, "
                        "numpy.ascontiguousarray(x)))")
    need = offset + math.prod(shape) * dtype.itemsize
    size = os.path.getsize(path)
    if size < need:
        raise UserError(f"{where}: {size} bytes, but its header says {dtype} of shape {tuple(shape)} ({need} bytes); "
                        "expected a complete file")
    return Header(tuple(shape), dtype, offset)


def _check_features(key: str, path: str, h: Header) -> None:
    where = f"dataset.{key}={path}"
    if h.dtype.kind not in FEATURE_KINDS or h.dtype.hasobject:
        raise UserError(f"{where}: dtype {h.dtype} cannot be used; expected numbers (float, integer or bool), read as "
                        "float32")
    if len(h.shape) < 2 or h.shape[0] == 0:
        raise UserError(f"{where}: shape {h.shape}; expected at least one row of features, (rows, features...)")


def _read_labels(key: str, path: str, h: Header) -> np.ndarray:
    where = f"dataset.{key}={path}"
    if h.dtype.kind not in "iu":
        raise UserError(f"{where}: labels of dtype {h.dtype}; expected integer class labels 0..C-1")
    if len(h.shape) != 1:
        raise UserError(f"{where}: shape {h.shape}; expected a 1-D array, one class label per row")
    y = np.load(path, allow_pickle=False)
    if len(y) and y.min() < 0:
        row = int(np.argmax(y < 0))
        raise UserError(f"{where}: label {y[row]} at row {row}; expected non-negative integer class labels")
    return y.astype(np.int64, copy=False)


def content_digest(key: str, path: str, h: Header) -> str:
    """sha256 of the array's dtype, shape and data bytes, read CHUNK_BYTES at a time; float features are checked
    finite (as float32, what training reads) on the way. Raises UserError at the first row that is not."""
    digest = hashlib.sha256(f"{h.dtype.str}{h.shape}".encode())
    row_bytes = h.dtype.itemsize * math.prod(h.shape[1:])
    rows_per_chunk = max(1, CHUNK_BYTES // max(row_bytes, 1))
    buf = bytearray(rows_per_chunk * row_bytes)
    with open(path, "rb", buffering=0) as f:
        f.seek(h.offset)
        for start in range(0, h.shape[0], rows_per_chunk):
            n = min(rows_per_chunk, h.shape[0] - start)
            view = memoryview(buf)[: n * row_bytes]
            filled = 0
            while filled < len(view):
                got = f.readinto(view[filled:])
                if not got:
                    raise UserError(f"dataset.{key}={path}: ended early; expected {h.shape[0]} rows")
                filled += got
            digest.update(view)
            if h.dtype.kind == "f":
                with np.errstate(over="ignore"):  # float64 beyond float32's range is reported as infinite
                    finite = np.isfinite(np.frombuffer(view, h.dtype).astype(np.float32, copy=False))
                if not finite.all():
                    row = start + int(np.argmin(finite.reshape(n, -1).all(axis=1)))
                    raise UserError(f"dataset.{key}={path}: NaN or infinite values (first at row {row}); expected "
                                    "finite features")
    return digest.hexdigest()


class NPY(Source):
    """X and y of each split as .npy files (labels 0..C-1). X is read a batch at a time (`in_memory: false`, the
    default: for sets larger than memory) or whole (`in_memory: true`); both give the same data and fingerprint."""

    peek_reads_files = True

    def __init__(self, x_train: str, y_train: str, x_test: str, y_test: str, in_memory: bool = False,
                 name: str = "npy") -> None:
        self.paths = dict(zip(KEYS, (x_train, y_train, x_test, y_test)))
        self.in_memory, self.name = in_memory, name

    def _checked(self) -> tuple[dict[str, Header], dict[str, np.ndarray]]:
        """Headers of all four files and the labels, checked against each other."""
        if not isinstance(self.in_memory, bool):
            raise UserError(f"dataset.in_memory={self.in_memory}: expected true or false")
        headers = {k: read_header(k, p) for k, p in self.paths.items()}
        for k in ("x_train", "x_test"):
            _check_features(k, self.paths[k], headers[k])
        labels = {k: _read_labels(k, self.paths[k], headers[k]) for k in ("y_train", "y_test")}
        for split in ("train", "test"):
            rows, n = headers[f"x_{split}"].shape[0], len(labels[f"y_{split}"])
            if n != rows:
                raise UserError(f"dataset.y_{split}={self.paths[f'y_{split}']}: {n} labels, but dataset.x_{split}="
                                f"{self.paths[f'x_{split}']} has {rows} rows; expected one label per row")
        train_shape, test_shape = headers["x_train"].shape[1:], headers["x_test"].shape[1:]
        if train_shape != test_shape:
            raise UserError(f"dataset.x_test={self.paths['x_test']}: samples of shape {test_shape}, but dataset.x_train"
                            f"'s are {train_shape}; expected the same shape")
        return headers, labels

    def check(self) -> None:
        self._checked()

    def peek(self) -> tuple[tuple[int, ...], int | None] | None:
        """The sample shape from X_train's header and the classes from the labels (None when a file is bad: `load`
        says why)."""
        try:
            headers, labels = self._checked()
        except UserError:
            return None
        return headers["x_train"].shape[1:], int(max(labels["y_train"].max(), labels["y_test"].max())) + 1

    def train_rows(self, cache_dir: str | Path) -> int | None:  # noqa: ARG002 (the embeddings check's signature)
        """Rows of the training set, from X_train's header (None when it cannot be read: `check` says why)."""
        try:
            return read_header("x_train", self.paths["x_train"]).shape[0]
        except UserError:
            return None

    def _digest(self, key: str, header: Header, cache_dir: str | Path) -> tuple[str, bool]:
        """X file `key`'s content digest, from the cache when its path, size and mtime are unchanged; and whether it
        was hashed now."""
        path = Path(self.paths[key]).resolve()
        st = path.stat()
        ident = {"v": CACHE_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
        cache = Path(cache_dir) / "npy" / f"{name}.json"
        try:
            return json.loads(cache.read_text())["digest"], False
        except (OSError, ValueError, KeyError):  # absent (or unreadable: hashed again)
            pass
        digest = content_digest(key, str(path), header)
        atomic_write_text(cache, json.dumps({**ident, "digest": digest}))
        return digest, True

    def prepare(self, cache_dir: str | Path) -> bool:
        """Hash the X files not yet in the cache (seconds per GB): a sweep's driver does it once for all trials."""
        headers, _ = self._checked()
        hashed = [self._digest(k, headers[k], cache_dir)[1] for k in ("x_train", "x_test")]
        return any(hashed)

    def load(self, cache_dir: str | Path) -> Dataset:
        headers, labels = self._checked()
        x = {}
        for k in ("x_train", "x_test"):
            h = headers[k]
            x[k] = FileRows(self.paths[k], h.offset, h.dtype, h.shape, self._digest(k, h, cache_dir)[0])
        y_train, y_test = labels["y_train"], labels["y_test"]
        fp = fingerprint(x["x_train"], y_train, x["x_test"], y_test)  # the same whether read whole or not
        if self.in_memory:
            x = {k: rows.take(slice(None)) for k, rows in x.items()}
        num_classes = int(max(y_train.max(), y_test.max())) + 1
        return Dataset(self.name, x["x_train"], y_train, x["x_test"], y_test, num_classes, fp)
