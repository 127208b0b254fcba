"""Contamination audit: which test samples have an exact or near copy in the training set (`python -m harness.audit`).

    report = contamination(x_train, x_test, threshold_cos=0.98)            # library
    python -m harness.audit dataset=mnist1d --threshold 0.98 --out DIR     # table on stdout; pairs + summary in DIR

Exact pairs are byte-identical samples: every row is hashed and each hash match confirmed with np.array_equal on the
original arrays, so they do not depend on the space, on k or on cosine rounding. Near pairs come from FAISS exact
inner-product search (IndexFlatIP) of each test row among the training rows, unit-normalised float32, in one of three
spaces: raw (flattened inputs), projection (the seeded Gaussian projection of the `projection` signal) or embedding
(an .npy per split, given by path). A near pair has cosine >= threshold and is not exact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import Dataset
from harness.data.rows import FileRows
from harness.errors import UserError, exit_user_error
from strategies.base import l2_normalise
from strategies.decontaminate import CHUNK_ROWS, DEFAULT_THRESHOLD_COS, max_cosine_to, nearest_by_cosine

SPACES = ("raw", "projection", "embedding")
PROJECTION_DIM = 128  # the `projection` signal's default width (probe.projection_dim in harness/config.py)


@dataclass(frozen=True)
class ContaminationReport:
    """Pairs (test row, training row, cosine in `space`) found by the audit, exact ones flagged, sorted by test row then
    descending cosine. A test row counts once: exact when it has any byte-identical training row, else near when it
    has a training row at cosine >= threshold_cos among its k nearest."""

    space: str
    threshold_cos: float
    k: int
    n_train: int
    n_test: int
    test_index: np.ndarray  # int64, one per pair
    train_index: np.ndarray  # int64
    cosine: np.ndarray  # float32, in `space`
    exact: np.ndarray  # bool: byte-identical samples

    @property
    def n_exact(self) -> int:
        """Test samples with at least one byte-identical training sample."""
        return len(np.unique(self.test_index[self.exact]))

    @property
    def n_near(self) -> int:
        """Test samples with a near pair and no exact one."""
        return len(np.setdiff1d(self.test_index[~self.exact], self.test_index[self.exact]))

    @property
    def n_contaminated(self) -> int:
        return self.n_exact + self.n_near

    @property
    def fraction_contaminated(self) -> float:
        return self.n_contaminated / self.n_test if self.n_test else 0.0

    @property
    def flagged(self) -> bool:
        """True when any test sample has an exact or near copy in the training set."""
        return self.n_contaminated > 0

    def top(self, n: int) -> np.ndarray:
        """Positions of the n pairs of highest cosine (exact first on ties)."""
        return np.lexsort((~self.exact, -self.cosine.astype(np.float64)))[:n]

    def summary(self) -> dict[str, float | int | str | bool]:
        return {"space": self.space, "threshold_cos": self.threshold_cos, "k": self.k, "n_train": self.n_train,
                "n_test": self.n_test, "n_exact": self.n_exact, "n_near": self.n_near,
                "n_contaminated": self.n_contaminated, "fraction_contaminated": self.fraction_contaminated,
                "n_pairs": len(self.test_index), "flagged": self.flagged}


def check_settings(threshold_cos: float, k: int, spaces: Sequence[str], chunk_rows: int) -> None:
    """One-line UserError for a setting the audit cannot use; called before any data is read."""
    if isinstance(threshold_cos, bool) or not isinstance(threshold_cos, int | float) or not 0 < threshold_cos <= 1:
        raise UserError(f"threshold={threshold_cos}: expected a cosine in (0, 1]")
    for name, value in (("k", k), ("chunk_rows", chunk_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name}={value}: expected a positive integer")
    for space in spaces:
        check_space(space)


def check_space(space: str) -> None:
    if space not in SPACES:
        raise UserError(f"space={space}: expected one of {', '.join(SPACES)}")


def projection(x: np.ndarray, seed: int, projection_dim: int = PROJECTION_DIM) -> np.ndarray:
    """Rows `x` through the `projection` signal's map (harness.signals.compute.data_signal), unit norm. Its matrix
    depends only on the seed and the widths, so training and test rows projected apart land in one space."""
    from harness.signals.compute import data_signal

    rows_only = Dataset("audit", x, np.zeros(len(x), np.int64), x[:0], np.zeros(0, np.int64), 1, "")
    return data_signal("projection", rows_only, seed, projection_dim)


def space_vectors(x_train: np.ndarray, x_test: np.ndarray, space: str, seed: int = 0,
                  projection_dim: int = PROJECTION_DIM,
                  embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit float32 rows (training, test) of `space`: raw = flattened inputs, projection, or embedding (the pair
    given, one row per sample)."""
    check_space(space)
    if space == "raw":
        return l2_normalise(x_train), l2_normalise(x_test)
    if space == "projection":
        return projection(x_train, seed, projection_dim), projection(x_test, seed, projection_dim)
    if embeddings is None:
        raise UserError("space=embedding: expected embeddings for the training and the test set (--embeddings)")
    e_train, e_test = embeddings
    if e_train.ndim != 2 or e_test.ndim != 2 or e_train.shape[1] != e_test.shape[1]:
        raise UserError(f"embeddings: expected two 2-D arrays of one width, got shapes {e_train.shape} and "
                        f"{e_test.shape}")
    if (len(e_train), len(e_test)) != (len(x_train), len(x_test)):
        raise UserError(f"embeddings: {len(e_train):,} training and {len(e_test):,} test rows; expected one per sample "
                        f"({len(x_train):,} and {len(x_test):,})")
    return l2_normalise(e_train), l2_normalise(e_test)


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row, digest_size=16).digest()


def exact_pairs(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (test row, training row) pair of byte-identical samples, sorted: rows hashed (blake2b of their bytes in
    one common dtype), each hash match confirmed with np.array_equal. Linear in the rows, whatever k or the space."""
    dtype = np.result_type(x_train.dtype, x_test.dtype)
    train = np.ascontiguousarray(x_train.reshape(len(x_train), -1), dtype=dtype)
    test = np.ascontiguousarray(x_test.reshape(len(x_test), -1), dtype=dtype)
    by_digest: dict[bytes, list[int]] = {}
    for t, row in enumerate(test):  # the smaller side is the usual one to hold
        by_digest.setdefault(_digest(row), []).append(t)
    pairs = [(t, j) for j, row in enumerate(train) for t in by_digest.get(_digest(row), ())
             if np.array_equal(test[t], row, equal_nan=True)]
    out = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return out[:, 0], out[:, 1]


def _check_shapes(x_train: np.ndarray, x_test: np.ndarray) -> None:
    if isinstance(x_train, FileRows) or isinstance(x_test, FileRows):
        raise UserError("dataset.in_memory=false: the audit hashes and searches every row; expected dataset.in_memory="
                        "true")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"training samples of shape {x_train.shape[1:]} and test samples of shape {x_test.shape[1:]}: "
                        "expected one shape")


def contamination(x_train: np.ndarray, x_test: np.ndarray, threshold_cos: float = DEFAULT_THRESHOLD_COS, k: int = 1,
                  space: str = "raw", chunk_rows: int = CHUNK_ROWS, *, seed: int = 0,
                  projection_dim: int = PROJECTION_DIM,
                  embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> ContaminationReport:
    """Audit the test set against the training set: exact pairs (byte-identical samples, all of them) and near pairs
    (among each test row's k nearest training rows by cosine in `space`, FAISS exact search, `chunk_rows` test rows
    at a time: those at cosine >= threshold_cos that are not exact).

    Invariant: equals a brute-force reference (full test x train cosine matrix, top k per row) for any chunk_rows.
    """
    check_settings(threshold_cos, k, [space], chunk_rows)
    _check_shapes(x_train, x_test)
    v_train, v_test = space_vectors(x_train, x_test, space, seed, projection_dim, embeddings)
    ex_t, ex_j = exact_pairs(x_train, x_test)
    cos, nbr = nearest_by_cosine(v_test, v_train, k, chunk_rows)
    t = np.repeat(np.arange(len(v_test), dtype=np.int64), nbr.shape[1])
    j, c = nbr.ravel(), cos.ravel()
    hit = (j >= 0) & (c >= threshold_cos)
    t, j, c = t[hit], j[hit], c[hit]
    n_train = len(v_train)
    near = ~np.isin(t * n_train + j, ex_t * n_train + ex_j)  # pair ids: n_test x n_train < 2^63
    ex_cos = np.einsum("ij,ij->i", v_test[ex_t], v_train[ex_j]) if len(ex_t) else np.zeros(0, np.float32)
    test_index = np.concatenate([ex_t, t[near]])
    train_index = np.concatenate([ex_j, j[near]])
    cosine = np.concatenate([ex_cos, c[near]]).astype(np.float32)
    exact = np.concatenate([np.ones(len(ex_t), bool), np.zeros(int(near.sum()), bool)])
    order = np.lexsort((train_index, -cosine.astype(np.float64), test_index))
    return ContaminationReport(space, float(threshold_cos), k, n_train, len(v_test), test_index[order],
                               train_index[order], cosine[order], exact[order])


def train_max_cosine(x_train: np.ndarray, x_test: np.ndarray, space: str = "raw", chunk_rows: int = CHUNK_ROWS, *,
                     seed: int = 0, projection_dim: int = PROJECTION_DIM,
                     embeddings: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per TRAINING sample, its largest cosine to any test sample in `space` (training rows searched against an index
    of the test rows): the `test_similarity` signal the decontaminate stage thresholds."""
    check_settings(DEFAULT_THRESHOLD_COS, 1, [space], chunk_rows)  # the threshold is the stage's, not needed here
    _check_shapes(x_train, x_test)
    v_train, v_test = space_vectors(x_train, x_test, space, seed, projection_dim, embeddings)
    return max_cosine_to(v_train, v_test, chunk_rows)


def load_embeddings(train_path: str, test_path: str) -> tuple[np.ndarray, np.ndarray]:
    """Two .npy files of per-sample embeddings (training, test); one-line UserError for a missing or unreadable one."""
    out = []
    for path in (train_path, test_path):
        if not Path(path).is_file():
            raise UserError(f"--embeddings {path}: file not found; expected an .npy of one embedding per sample")
        try:
            out.append(np.load(path, allow_pickle=False))
        except Exception as e:
            raise UserError(f"--embeddings {path}: not a readable .npy file ({e})") from None
    return out[0], out[1]


def write_report(report: ContaminationReport, out_dir: Path, extra: dict | None = None) -> None:
    """pairs_<space>.csv and .npz (test_index, train_index, cosine, exact); the summary goes in the caller's JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"test_index": report.test_index, "train_index": report.train_index, "cosine": report.cosine,
              "exact": report.exact}
    np.savez(out_dir / f"pairs_{report.space}.npz", **arrays)
    table = np.column_stack([report.test_index, report.train_index, report.cosine, report.exact])
    np.savetxt(out_dir / f"pairs_{report.space}.csv", table, fmt=["%d", "%d", "%.6f", "%d"], delimiter=",",
               header="test_index,train_index,cosine,exact", comments="")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage and exits; Winnow's CLIs say one line
        raise UserError(message)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = _OneLineParser(prog="python -m harness.audit", description="Which test samples have an exact or near copy "
                       "in the training set. Hydra overrides choose the dataset (dataset=npz dataset.path=...).")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m harness.run")
    p.add_argument("--space", default="raw,projection",
                   help=f"comma-separated spaces to search in: {', '.join(SPACES)} (default raw,projection)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_COS,
                   help="cosine at or above which a pair is near (default %(default)s)")
    p.add_argument("--k", type=int, default=1, help="nearest training rows looked at per test row (default 1)")
    p.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS, help="test rows per FAISS search call")
    p.add_argument("--embeddings", nargs=2, metavar=("TRAIN.npy", "TEST.npy"), help="embeddings for space embedding")
    p.add_argument("--top", type=int, default=5, help="pairs of highest cosine printed per space (default 5)")
    p.add_argument("--out", type=Path, help="folder for summary.json and pairs_<space>.csv/.npz")
    return p.parse_intermixed_args(list(argv))


def _print_table(name: str, n_train: int, n_test: int, args: argparse.Namespace,
                 rows: list[tuple[ContaminationReport, int, float]]) -> None:
    print(f"audit: dataset={name} train {n_train:,} test {n_test:,} threshold cos {args.threshold} k {args.k}")
    print(f"{'space':<11}{'exact':>8}{'near':>8}{'contaminated':>14}{'fraction':>10}{'train>=thr':>12}{'search_s':>10}")
    for r, n_train_hit, search_s in rows:
        print(f"{r.space:<11}{r.n_exact:>8,}{r.n_near:>8,}{r.n_contaminated:>14,}{r.fraction_contaminated:>10.4f}"
              f"{n_train_hit:>12,}{search_s:>10.2f}")
    for r, _, _ in rows:
        for p in r.top(args.top):
            kind = "exact" if r.exact[p] else "near"
            print(f"top {r.space}: test {r.test_index[p]} ~ train {r.train_index[p]} cos {r.cosine[p]:.4f} {kind}")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m harness.audit [overrides] [--space ...] [--threshold ...] [--out DIR]`: exit 0 after the table, or
    one line and exit 2 for bad input, before any compute."""
    from harness.build import build_dataset
    from harness.preflight import compose_config, preflight

    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        spaces = [s.strip() for s in args.space.split(",") if s.strip()]
        check_settings(args.threshold, args.k, spaces, args.chunk_rows)
        if args.top < 0:
            raise UserError(f"top={args.top}: expected a non-negative integer")
        if "embedding" in spaces and not args.embeddings:
            raise UserError("space=embedding: expected --embeddings TRAIN.npy TEST.npy")
        embeddings = load_embeddings(*args.embeddings) if args.embeddings else None
        preflight(args.overrides)  # every config error as one line, as python -m harness.run says it
        cfg = compose_config(args.overrides)
        source = build_dataset(cfg)
        source.check()
        source.prepare(cfg.cache_dir)
        data = source.load(cfg.cache_dir)
        _check_shapes(data.x_train, data.x_test)
        rows = []
        for space in spaces:
            kw = {"seed": cfg.seed, "projection_dim": cfg.probe.projection_dim, "embeddings": embeddings}
            start = time.perf_counter()
            report = contamination(data.x_train, data.x_test, args.threshold, args.k, space, args.chunk_rows, **kw)
            per_train = train_max_cosine(data.x_train, data.x_test, space, args.chunk_rows, **kw)
            rows.append((report, int(np.sum(per_train >= args.threshold)), time.perf_counter() - start))
    except UserError as e:
        exit_user_error("winnow-audit", e)
    _print_table(cfg.dataset.name, len(data.x_train), len(data.x_test), args, rows)
    if args.out is not None:
        for report, _, _ in rows:
            write_report(report, args.out)
        summary = {"dataset": cfg.dataset.name, "dataset_fingerprint": data.fingerprint, "overrides": args.overrides,
                   "spaces": {r.space: {**r.summary(), "n_train_at_threshold": n, "search_s": s} for r, n, s in rows}}
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.out}/summary.json and pairs_<space>.csv/.npz")


if __name__ == "__main__":
    main()
