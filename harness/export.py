"""`python -m harness.export RUN_ID [--format npy|csv|jsonl] [--out PATH] [--tracking-uri URI]`.

Writes the training-set rows a recorded trial selected (its `selected_indices.npy` artifact, checked against
its `selected_indices_sha256` tag), with what they are valid for: the dataset fingerprint, the config hash, the
run id, the strategy, the fraction, and the coreset weights when the run logged them (`selected_weights.npy`).
`harness.exported.load_export` reads any of the three formats back and refuses other data. docs/provenance.md.

Formats (the metadata is the same JSON object in each):
  npy    PATH holds the int64 indices (numpy.save); the metadata, weights included, sits beside it in PATH.json
  csv    a first line `# winnow-export {metadata}`, then columns `index` (and `weight`)
  jsonl  a first line `{"winnow_export": {metadata}}`, then one `{"index": i}` (or `{"index": i, "weight": w}`)
         object per line

Errors a user can cause (unknown run, a run without indices, unknown format, unwritable path) print one line
and exit 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from harness.errors import UserError, exit_user_error
from harness.tracking import find_run

FORMATS = ("npy", "csv", "jsonl")
EXPORT_VERSION = 1
INDICES_ARTIFACT = "selected_indices.npy"  # logged by harness/select.py
WEIGHTS_ARTIFACT = "selected_weights.npy"  # logged by harness/select.py when the selection has weights
CARD_ARTIFACT = "dataset_card.json"  # logged by harness/trial.py (harness/card.py), when present
CSV_PREFIX = "# winnow-export "
JSONL_KEY = "winnow_export"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout stays the one summary line


def indices_sha256(indices: np.ndarray) -> str:
    """The run's `selected_indices_sha256` tag, computed as harness/select.py does."""
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def sidecar_path(path: str | Path) -> Path:
    """Where an npy export keeps its metadata: `selection.npy` -> `selection.npy.json`."""
    return Path(f"{path}.json")


def read_run_selection(run_id: str, uri: str | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(indices, weights or None, metadata) of `run_id` in the store `uri` (None: $MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db). Raises UserError naming the run for an unknown run or one without indices."""
    client, run = find_run(run_id, uri)
    tags = run.data.tags
    indices = _artifact_array(client, run_id, INDICES_ARTIFACT)
    if indices is None:
        raise UserError(f"run {run_id}: has no {INDICES_ARTIFACT} artifact (status {run.info.status}); expected a "
                        "run that reached selection, recorded by harness.trial")
    expected = tags.get("selected_indices_sha256")
    if expected is not None and indices_sha256(indices) != expected:  # the artifact is not what the run selected
        raise UserError(f"run {run_id}: {INDICES_ARTIFACT} hashes to {indices_sha256(indices)}, the run's "
                        f"selected_indices_sha256 tag says {expected}")
    weights = _artifact_array(client, run_id, WEIGHTS_ARTIFACT)
    card_text = _artifact_text(client, run_id, CARD_ARTIFACT)
    n_train = run.data.metrics.get("n_train")
    meta: dict[str, Any] = {
        "export_version": EXPORT_VERSION,
        "run_id": run_id,
        "run_status": run.info.status,
        "dataset": tags.get("dataset"),
        "dataset_fingerprint": tags.get("dataset_fingerprint"),
        "config_hash": tags.get("config_hash"),
        "strategy": tags.get("strategy"),
        "fraction": _number(tags.get("fraction")),
        "seed": _number(tags.get("seed")),
        "n_train": int(n_train) if n_train is not None else None,  # the loader's range check without the data
        "n_selected": len(indices),
        "selected_indices_sha256": indices_sha256(indices),
        "weighted": weights is not None,
    }
    if card_text is not None:
        meta["dataset_card"] = json.loads(card_text)
    if meta["dataset_fingerprint"] is None:
        raise UserError(f"run {run_id}: has no dataset_fingerprint tag; expected a run recorded by harness.trial")
    return indices.astype(np.int64), weights, meta


def write_export(path: str | Path, fmt: str, indices: np.ndarray, weights: np.ndarray | None, meta: dict) -> None:
    """Write `indices` (and `weights`) with `meta` in format `fmt`. Raises UserError for an unknown format or a
    path that cannot be written."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: unknown; expected one of {', '.join(FORMATS)}")
    path = Path(path)
    try:
        if fmt == "npy":
            # np.save on a path appends .npy when missing; through a file object the name stays the user's
            with open(path, "wb") as f:
                np.save(f, indices)
            side = {**meta, "weights": weights.tolist() if weights is not None else None}
            sidecar_path(path).write_text(json.dumps(side, sort_keys=True, indent=2) + "\n")
        elif fmt == "csv":
            frame = pd.DataFrame({"index": indices})
            if weights is not None:
                frame["weight"] = np.asarray(weights, dtype=np.float64)
            with open(path, "w", newline="") as f:
                f.write(CSV_PREFIX + json.dumps(meta, sort_keys=True) + "\n")
                frame.to_csv(f, index=False, float_format="%.17g")  # 17 digits: a float64 reads back exactly
        else:
            with open(path, "w") as f:
                f.write(json.dumps({JSONL_KEY: meta}, sort_keys=True) + "\n")
                for k, i in enumerate(indices.tolist()):
                    row = {"index": i} if weights is None else {"index": i, "weight": float(weights[k])}
                    f.write(json.dumps(row) + "\n")
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or type(e).__name__})") from None


def export(run_id: str, fmt: str = "npy", out: str | Path | None = None, uri: str | None = None) -> tuple[Path, dict]:
    """Export `run_id`'s selection to `out` (default `selection-<run_id>.<fmt>` here); the path and metadata."""
    if fmt not in FORMATS:  # before any store access: a typo costs nothing
        raise UserError(f"--format {fmt}: unknown; expected one of {', '.join(FORMATS)}")
    indices, weights, meta = read_run_selection(run_id, uri)
    path = Path(out) if out is not None else Path(f"selection-{run_id}.{fmt}")
    write_export(path, fmt, indices, weights, meta)
    return path, meta


def _artifact_array(client, run_id: str, name: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return np.load(client.download_artifacts(run_id, name, tmp), allow_pickle=False)
        except Exception:  # absent: MLflow raises per store (MlflowException, OSError); either way, no artifact
            return None


def _artifact_text(client, run_id: str, name: str) -> str | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, name, tmp)).read_text()
        except Exception:
            return None


def _number(tag: str | None) -> int | float | None:
    """A tag back as the number it was logged from (tags are strings)."""
    if tag is None:
        return None
    try:
        return int(tag)
    except ValueError:
        return float(tag)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other error of this command (its default adds the usage)."""

    def error(self, message: str) -> NoReturn:
        exit_user_error(self.prog, UserError(message))


def main(argv: list[str] | None = None) -> None:
    parser = _OneLineParser(prog="winnow-export",
                            description="Write the training-set indices a recorded trial selected, with provenance.")
    parser.add_argument("run_id", help="MLflow run id of a trial")
    parser.add_argument("--format", default="npy", help=f"one of {', '.join(FORMATS)} (default npy)")
    parser.add_argument("--out", default=None, help="output file (default selection-RUN_ID.FORMAT)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    args = parser.parse_args(argv)
    try:
        path, meta = export(args.run_id, args.format, args.out, args.tracking_uri)
    except UserError as e:
        exit_user_error("winnow-export", e)
    side = f" (metadata in {sidecar_path(path)})" if args.format == "npy" else ""
    print(f"{path}: {meta['n_selected']} of {meta['n_train']} indices, strategy {meta['strategy']} fraction "
          f"{meta['fraction']}{', weighted' if meta['weighted'] else ''}, run {meta['run_id']}, dataset fingerprint "
          f"{meta['dataset_fingerprint']}, config hash {meta['config_hash']}{side}")


if __name__ == "__main__":
    main()
