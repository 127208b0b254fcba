"""Rows of an array in an .npy file, read on demand, so a feature array larger than memory is never loaded whole.

`FileRows` stands where a dataset's feature array would be (`Dataset.x_train`, `x_test`, `x_val`): it has the
array's length and shape, and `take(rows)` reads just those rows, cast to float32, with positional reads
(`os.preadv`) served by the operating system's page cache. Rows are deliberately not read through a memory map
(`np.load(mmap_mode="r")`): on the development VM's kernel (6.18) a page fault on a mapped file maps the page
cache's whole folio (up to 2 MB) into the process, so 1,000 random rows of a 400 MB file read through the map put
426 MB in the process's resident set, and releasing the pages after each batch (`madvise(MADV_DONTNEED)`) made a
row about 3x slower to get than a read. A read copies the row into the batch and nothing else stays resident.

Anything that asks numpy for the whole array (`np.asarray`, `np.ascontiguousarray`) gets a one-line UserError
instead of a silent load of every row.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np

from harness.errors import UserError


class FileRows:
    """Rows `index` (None: all) of the C-ordered array in `path` whose data starts at byte `offset`. `digest` is the
    file's content hash (harness/data/npy.py); `content_digest` names these rows' content for fingerprints."""

    dtype = np.dtype(np.float32)  # what `take` returns, whatever the file holds

    def __init__(self, path: str, offset: int, file_dtype: np.dtype, file_shape: tuple[int, ...], digest: str,
                 index: np.ndarray | None = None) -> None:
        self.path, self.offset, self.digest, self.index = path, offset, digest, index
        self.file_dtype, self.file_shape = np.dtype(file_dtype), tuple(file_shape)
        self.row_bytes = self.file_dtype.itemsize * math.prod(self.file_shape[1:])
        self._fd: int | None = None  # opened on the first read, in each process (a pickled copy reopens it)

    def __len__(self) -> int:
        return self.file_shape[0] if self.index is None else len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.file_shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.file_shape)

    @property
    def content_digest(self) -> str:
        if self.index is None:
            return self.digest
        return hashlib.sha256(self.digest.encode() + np.ascontiguousarray(self.index, np.int64).tobytes()).hexdigest()

    def subset(self, rows: np.ndarray) -> FileRows:
        """The rows at positions `rows` of this view, as a view: nothing is read."""
        rows = np.asarray(rows, dtype=np.int64)
        return FileRows(self.path, self.offset, self.file_dtype, self.file_shape, self.digest,
                        rows if self.index is None else self.index[rows])

    def take(self, rows: np.ndarray | slice, out: np.ndarray | None = None) -> np.ndarray:
        """The rows at positions `rows` (an integer array or a slice) of this view as float32 (n, *features), read
        into `out` (C-contiguous float32) when given. Runs of consecutive rows are read with one call each."""
        if isinstance(rows, slice):
            picked = range(len(self))[rows]
            positions = np.arange(picked.start, picked.stop, picked.step, dtype=np.int64)
        else:
            positions = np.asarray(rows)
            positions = np.flatnonzero(positions) if positions.dtype == bool else positions.astype(np.int64, copy=False)
        if len(positions) and (positions.min() < -len(self) or positions.max() >= len(self)):
            raise IndexError(f"{self.path}: row index out of range for {len(self)} rows")
        positions = positions % max(len(self), 1)  # negative positions count from the end, as numpy's
        file_rows = positions if self.index is None else self.index[positions]
        shape = (len(file_rows), *self.file_shape[1:])
        direct = self.file_dtype == self.dtype  # float32 in this machine's byte order: read straight into `out`
        buf = out if direct and out is not None else np.empty(shape, self.file_dtype)
        if buf.shape != shape or not buf.flags.c_contiguous:
            raise ValueError(f"out: expected a C-contiguous array of shape {shape}")
        self._read(file_rows, buf)
        if buf is out:
            return out
        if out is None:
            return buf if direct else buf.astype(np.float32)
        out[...] = buf
        return out

    def __getitem__(self, key: int | np.ndarray | slice) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self.take(np.array([key]))[0]
        return self.take(key)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        raise UserError(f"{self.path}: a step asked for all {len(self):,} rows in memory, but dataset.in_memory=false "
                        "keeps them in the file and reads a batch at a time; expected dataset.in_memory=true (when "
                        "they fit in memory)")

    def _read(self, file_rows: np.ndarray, buf: np.ndarray) -> None:
        if len(file_rows) == 0:
            return
        view, size = memoryview(buf).cast("B"), self.row_bytes
        breaks = (np.flatnonzero(np.diff(file_rows) != 1) + 1).tolist()
        first = file_rows.tolist()
        fd = self._file()
        for start, end in zip([0, *breaks], [*breaks, len(file_rows)]):
            part, offset = view[start * size : end * size], self.offset + first[start] * size
            while len(part):  # a read may return less than asked (at most 2 GiB per call on Linux)
                got = os.preadv(fd, [part], offset)
                if got == 0:
                    raise UserError(f"{self.path}: ended before row {first[start] + end - start - 1}; expected "
                                    f"{self.file_shape[0]} rows (was the file changed while in use?)")
                part, offset = part[got:], offset + got

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
            if hasattr(os, "posix_fadvise"):  # rows are read in random order: no read-ahead around each one
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        return self._fd

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a descriptor means nothing in another process

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
