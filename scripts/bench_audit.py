"""Contamination audit at scale: every test row's nearest training row by FAISS exact inner product (IndexFlatIP,
float32), plus the byte-identical check, on random unit rows with planted exact and near copies.

    python scripts/bench_audit.py                            # the issue's size: 100,000 x 384 test vs 1,000,000 train
    python scripts/bench_audit.py --n-test 10000             # a tenth of the test rows; extrapolates to --goal-n-test

Prints the machine, this machine's float32 matmul rate (numpy, 4096^2), the audit's wall time (`contamination`, the
library call the CLI makes), the byte-identical check alone, the search's GFLOP/s (2 x n_test x n_train x d flops over
the search time), recall of the planted pairs and false pairs, peak RSS, and a linear extrapolation of the search to
--goal-n-test test rows (the search is linear in the test rows; labelled as an extrapolation, not a measurement).
Goal (issue 15): <= 60 s at 100,000 x 384 against 1,000,000 x 384.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.audit import contamination, exact_pairs  # noqa: E402
from harness.manifest import cpu_model  # noqa: E402
from strategies.base import row_norms  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def unit_rows(rng: np.random.Generator, n: int, d: int, chunk: int = 100_000) -> np.ndarray:
    """n random unit float32 rows, built in chunks so the peak stays near the array's own size."""
    x = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        x[s : s + chunk] = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
    x /= row_norms(x)[:, None]
    return x


def planted(n_train: int, n_test: int, d: int, n_exact: int, n_near: int, near_cos: float, seed: int):
    """Random unit training and test rows; n_exact test rows copied byte for byte over training rows, n_near more at
    cosine `near_cos` (test direction plus an orthogonal random one). Returns the arrays and the planted pairs."""
    rng = np.random.default_rng(seed)
    x_train, x_test = unit_rows(rng, n_train, d), unit_rows(rng, n_test, d)
    src = rng.choice(n_test, n_exact + n_near, replace=False)
    dst = rng.choice(n_train, n_exact + n_near, replace=False)
    x_train[dst[:n_exact]] = x_test[src[:n_exact]]
    u = x_test[src[n_exact:]].astype(np.float64)
    w = rng.standard_normal(u.shape)
    w -= np.sum(w * u, axis=1, keepdims=True) * u
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    x_train[dst[n_exact:]] = near_cos * u + np.sqrt(1 - near_cos**2) * w
    exact = set(zip(src[:n_exact].tolist(), dst[:n_exact].tolist()))
    near = set(zip(src[n_exact:].tolist(), dst[n_exact:].tolist()))
    return x_train, x_test, exact, near


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-test", type=int, default=100_000)
    p.add_argument("--n-train", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--n-exact", type=int, default=100, help="planted byte-identical copies")
    p.add_argument("--n-near", type=int, default=100, help="planted near copies at --near-cos")
    p.add_argument("--near-cos", type=float, default=0.99)
    p.add_argument("--threshold", type=float, default=0.98)
    p.add_argument("--chunk-rows", type=int, default=16_384)
    p.add_argument("--goal-n-test", type=int, default=100_000, help="test rows the extrapolation is for")
    p.add_argument("--goal-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import faiss

    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), faiss {faiss.__version__} with "
          f"{faiss.omp_get_max_threads()} OpenMP threads, numpy {np.__version__}; load average (1/5/15 min) at start "
          f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}")
    print(f"float32 matmul 4096^2 (numpy): {matmul_gflops():.0f} GFLOP/s")
    start = time.perf_counter()
    x_train, x_test, exact, near = planted(args.n_train, args.n_test, args.d, args.n_exact, args.n_near,
                                           args.near_cos, args.seed)
    print(f"data: train {args.n_train:,} x {args.d} float32 ({x_train.nbytes / 1e9:.2f} GB), test {args.n_test:,} x "
          f"{args.d}; planted {len(exact)} exact, {len(near)} near at cosine {args.near_cos} "
          f"(built in {time.perf_counter() - start:.1f} s)")

    start = time.perf_counter()
    report = contamination(x_train, x_test, args.threshold, k=1, chunk_rows=args.chunk_rows)
    audit_s = time.perf_counter() - start
    start = time.perf_counter()
    exact_pairs(x_train, x_test)
    exact_s = time.perf_counter() - start
    search_s = audit_s - exact_s  # unit-norm check, FAISS index build and search, pair bookkeeping
    flop = 2.0 * args.n_test * args.n_train * args.d

    found = set(zip(report.test_index.tolist(), report.train_index.tolist()))
    found_exact = set(zip(report.test_index[report.exact].tolist(), report.train_index[report.exact].tolist()))
    planted_all = exact | near
    print(f"audit {args.n_test:,} test vs {args.n_train:,} train: wall {audit_s:.1f} s (contamination(), measured); "
          f"byte-identical check alone {exact_s:.1f} s; search and the rest {search_s:.1f} s = "
          f"{flop / search_s / 1e9:.0f} GFLOP/s ({flop / 1e12:.1f} TFLOP)")
    print(f"found: {report.n_exact} exact, {report.n_near} near test samples; recall of planted pairs "
          f"{len(found & planted_all) / max(len(planted_all), 1):.4f}, exact told apart: {found_exact == exact}, "
          f"pairs outside the planted ones: {len(found - planted_all)}; peak RSS {peak_rss_gb():.2f} GB")
    scale = args.goal_n_test / args.n_test
    if scale != 1:
        goal_flop = flop * scale
        est = search_s * scale + exact_s  # hashing is dominated by the training rows, which do not change
        print(f"EXTRAPOLATION (not measured): {args.goal_n_test:,} test rows = {goal_flop / 1e12:.1f} TFLOP at the "
              f"measured {flop / search_s / 1e9:.0f} GFLOP/s -> about {est:.0f} s; goal <= {args.goal_s:.0f} s needs "
              f"{goal_flop / args.goal_s / 1e9:.0f} GFLOP/s")
    else:
        print(f"goal <= {args.goal_s:.0f} s: {'met' if audit_s <= args.goal_s else 'not met'} ({audit_s:.1f} s)")


if __name__ == "__main__":
    main()
