"""Embeddings computed elsewhere (a pretrained or self-supervised encoder), read from an .npy file: the `file` signal.

`strategy.embedding=file` with `embeddings.path=emb.npy` gives SemDeDup, kNN dedup, k-center, herding and
prototypes these rows in place of the probe's penultimate features, and no probe is trained for them. Row i is
sample i of the original training set (before `dataset.val_fraction` holds rows out). The file is checked before
any compute where that is cheap (its .npy header, and the row count when the dataset source knows it) and again
when read (row count, finite values).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.base import Dataset, fingerprint
from harness.errors import UserError, first_line

EXPECTED = "an .npy file of shape (training rows, features), float, one row per sample of the original training set"


def _where(path: str | None) -> str:
    """The key and the file, as every message here starts."""
    if not path:
        raise UserError(f"embeddings.path is null: strategy.embedding=file reads it; expected {EXPECTED}")
    if not Path(path).is_file():
        raise UserError(f"embeddings.path={path}: file not found; expected {EXPECTED}")
    return f"embeddings.path={path}"


def _open(path: str | None) -> np.ndarray:
    """The file memory-mapped: only its header is read until rows are touched."""
    where = _where(path)
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise UserError(f"{where}: not a readable .npy file ({first_line(e)}); expected {EXPECTED}") from None
    if not isinstance(emb, np.ndarray) or emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        what = f"{emb.dtype} array of shape {emb.shape}" if isinstance(emb, np.ndarray) else type(emb).__name__
        raise UserError(f"{where}: a {what}; expected a 2-D float array (training rows x features)")
    return emb


def _check_rows(path: str, rows: int, train_rows: int) -> None:
    if rows != train_rows:
        raise UserError(f"embeddings.path={path}: {rows} rows, but the training set has {train_rows}; expected one "
                        "row per sample of the original training set")


def check_embeddings_file(path: str | None, train_rows: int | None) -> None:
    """Preflight: the file exists and its header says 2-D float; its row count equals `train_rows` when known."""
    emb = _open(path)
    if train_rows is not None:
        _check_rows(path, len(emb), train_rows)


@dataclass(frozen=True)
class EmbeddingsFile:
    """The rows of the trial's training set, and the fingerprint of the whole file (dtype, shape and values)."""

    rows: np.ndarray
    fingerprint: str


def load_embeddings(path: str | None, data: Dataset) -> EmbeddingsFile:
    """The file's rows for `data`'s training set: all of them, or those left after `dataset.val_fraction` (whose
    held-out rows are `data.val_indices`). Raises UserError naming the file for a wrong row count or values that are
    not finite."""
    emb = _open(path)
    held_out = data.val_indices if data.val_indices is not None else np.zeros(0, dtype=np.int64)
    _check_rows(path, len(emb), len(data.y_train) + len(held_out))
    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise UserError(f"embeddings.path={path}: {len(bad)} row{'s' * (len(bad) > 1)} with NaN or infinite values "
                        f"(first: row {bad[0]}); expected finite values")
    keep = np.ones(len(emb), dtype=bool)
    keep[held_out] = False
    rows = emb if keep.all() else emb[keep]
    return EmbeddingsFile(np.asarray(rows, dtype=np.float32), fingerprint(emb))
