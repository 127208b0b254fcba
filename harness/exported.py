"""Read back a selection written by `python -m harness.export`, refusing data it was not made for.

An export names rows of the training set a trial saw (after its validation split and corruptions); on any other
data the same numbers pick other samples without a word, so the dataset fingerprint must match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pandas as pd

from harness.data.base import Dataset
from harness.errors import UserError
from harness.export import CSV_PREFIX, JSONL_KEY, indices_sha256, sidecar_path


@dataclass(frozen=True)
class Export:
    """An export as written: indices (int64), weights (float64, one per index) or None, and its metadata."""

    indices: np.ndarray
    weights: np.ndarray | None
    meta: dict


def read_export(path: str | Path) -> Export:
    """Parse an export in any format (by its suffix: .npy with its .json sidecar, .csv, .jsonl); no data checks."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such export file")
    try:
        if path.suffix == ".npy":
            side = sidecar_path(path)
            if not side.is_file():
                raise UserError(f"{path}: its metadata {side} is missing; expected the pair harness.export writes")
            meta = json.loads(side.read_text())
            raw = meta.pop("weights", None)
            indices, weights = np.load(path, allow_pickle=False), None if raw is None else np.asarray(raw, np.float64)
        elif path.suffix == ".csv":
            with open(path) as f:
                first = f.readline()
                if not first.startswith(CSV_PREFIX):
                    raise UserError(f"{path}: first line is not '{CSV_PREFIX.strip()} {{...}}'; not a Winnow export")
                meta = json.loads(first[len(CSV_PREFIX):])
                frame = pd.read_csv(f, dtype={"index": np.int64, "weight": np.float64})
            indices = frame["index"].to_numpy()
            weights = frame["weight"].to_numpy() if "weight" in frame else None
        elif path.suffix == ".jsonl":
            lines = path.read_text().splitlines()
            head = json.loads(lines[0]) if lines else {}
            if not isinstance(head, dict) or JSONL_KEY not in head:
                raise UserError(f"{path}: first line has no '{JSONL_KEY}' object; not a Winnow export")
            meta = head[JSONL_KEY]
            rows = [json.loads(ln) for ln in lines[1:] if ln.strip()]
            indices = np.array([r["index"] for r in rows], dtype=np.int64)
            weights = np.array([r["weight"] for r in rows], dtype=np.float64) if meta.get("weighted") else None
        else:
            raise UserError(f"{path}: unknown export suffix {path.suffix!r}; expected .npy, .csv or .jsonl")
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path}: malformed export ({type(e).__name__}: {e})") from None
    return Export(np.asarray(indices), weights, meta)


def check_export(export: Export, data_or_fingerprint: Dataset | str, path: str | Path) -> None:
    """Refuse other data (fingerprints differ), indices out of range or repeated, a file edited since export."""
    fp = data_or_fingerprint if isinstance(data_or_fingerprint, str) else data_or_fingerprint.fingerprint
    theirs = export.meta.get("dataset_fingerprint")
    if fp != theirs:
        raise UserError(f"{path}: exported for dataset fingerprint {theirs}; this data has fingerprint {fp}")
    idx = export.indices
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise UserError(f"{path}: indices of shape {idx.shape} and dtype {idx.dtype}; expected 1-D integers")
    # the data's own size when given, else the one the run recorded
    n = len(data_or_fingerprint.y_train) if not isinstance(data_or_fingerprint, str) else export.meta.get("n_train")
    if len(idx) and (idx.min() < 0 or (n is not None and idx.max() >= n)):
        bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
        raise UserError(f"{path}: index {bad} is outside the training set of {n} rows")
    if len(np.unique(idx)) != len(idx):
        raise UserError(f"{path}: {len(idx) - len(np.unique(idx))} repeated indices; a selection is unique rows")
    expected = export.meta.get("selected_indices_sha256")
    if expected is not None and indices_sha256(idx) != expected:
        raise UserError(f"{path}: indices hash to {indices_sha256(idx)}, the export says {expected}; the file was "
                        "changed after export")
    if export.weights is not None and len(export.weights) != len(idx):
        raise UserError(f"{path}: {len(export.weights)} weights for {len(idx)} indices")


@overload
def load_export(path: str | Path, data_or_fingerprint: Dataset | str,
                with_weights: Literal[False] = ...) -> np.ndarray: ...
@overload
def load_export(path: str | Path, data_or_fingerprint: Dataset | str,
                with_weights: Literal[True]) -> tuple[np.ndarray, np.ndarray | None]: ...
def load_export(path: str | Path, data_or_fingerprint: Dataset | str,
                with_weights: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """The exported indices (int64) into `data`'s training set, checked against `data` (a Dataset, or just its
    fingerprint: then the range check uses the run's recorded n_train). `with_weights=True`: (indices, weights or
    None). Raises UserError, one line naming the file, for data with another fingerprint or a malformed file."""
    export = read_export(path)
    check_export(export, data_or_fingerprint, path)
    indices = export.indices.astype(np.int64)
    return (indices, export.weights) if with_weights else indices
