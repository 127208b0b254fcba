"""Selection kernels at scale: SemDeDup on 1M x 384 and k-center greedy 10k of 100k x 128.

    python scripts/bench_selection.py            # the issue's sizes; results go in docs/benchmarks.md

Prints, in one run: this machine's float32 matmul rate (4096^2), SemDeDup wall time, peak RSS and recall of
planted near-duplicates at 1M rows, the same kernel against a brute-force reference (full similarity matrix of
each cluster, one cluster at a time) at 100k rows with the same clusters, and k-center greedy's wall time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strategies.base import SelectionContext, row_norms  # noqa: E402
from strategies.coresets import kcenter_greedy, nearest_centroid, spherical_kmeans  # noqa: E402
from strategies.dedup import SemDeDup, max_sim_to_earlier, within_cluster_order  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def matmul_gflops(n: int = 4096, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def clustered_with_duplicates(n: int, d: int, n_dup: int, seed: int, spread: float = 1.0, chunk: int = 100_000):
    """Unit rows around 2,000 topics (within-topic cosine ~0.5), the last n_dup rows near-copies (cosine ~0.995)
    of random earlier rows. Built in float32 chunks so the peak stays near the array's own size."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((2000, d), dtype=np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    x = np.empty((n, d), np.float32)
    n_orig = n - n_dup
    for s in range(0, n_orig, chunk):
        e = min(s + chunk, n_orig)
        noise = rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] = topics[rng.integers(0, 2000, e - s)] + spread / np.sqrt(d) * noise
    src = rng.choice(n_orig, n_dup, replace=False)
    x[n_orig:] = x[src] + 0.1 / np.sqrt(d) * rng.standard_normal((n_dup, d), dtype=np.float32)
    x /= row_norms(x)[:, None]
    return x, src, np.arange(n_orig, n)


def brute_max_sim(x: np.ndarray, order: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """Reference: each cluster's full similarity matrix, max of each column above the diagonal (0 if none).
    torch, like the kernel, so both sides use the same BLAS and thread pool."""
    m = np.zeros(len(x), np.float32)
    a_sorted = assign[order]
    for c in np.unique(a_sorted):
        idx = order[a_sorted == c]
        xc = torch.from_numpy(x[idx])
        m[idx] = (xc @ xc.T).triu(1).amax(0).numpy()
    return m


def bench_semdedup(n: int, d: int, n_clusters: int, eps: float, seed: int = 0) -> None:
    x, src, dup = clustered_with_duplicates(n, d, n // 100, seed)
    print(f"data: {n:,} x {d} float32 ({x.nbytes / 1e9:.2f} GB), {len(dup):,} planted near-duplicates, "
          f"{n_clusters} clusters, eps={eps}")
    stage = SemDeDup(embedding="e", n_clusters=n_clusters, eps=eps, niter=10, max_points_per_centroid=64)
    ctx = SelectionContext(np.arange(n), np.zeros(n, np.int64), 1, 1.0, np.random.default_rng(seed), {"e": x})
    start = time.perf_counter()
    kept_idx = stage.select(ctx).indices
    wall = time.perf_counter() - start
    kept = np.zeros(n, bool)
    kept[kept_idx] = True
    recall = np.mean(~(kept[src] & kept[dup]))  # a planted pair is caught when one of the two is dropped
    planted = np.zeros(n, bool)
    planted[src] = planted[dup] = True
    removed = ~kept
    print(f"SemDeDup {n:,} rows: wall {wall:.1f} s (goal <= 30), peak RSS {peak_rss_gb():.2f} GB (goal <= 3, "
          f"process incl. the input), removed {removed.sum():,}, recall of planted pairs {recall:.4f} (goal >= 0.99), "
          f"removed outside planted pairs {np.sum(removed & ~planted):,}; "
          f"within-cluster matmul {stage.info['matmul_gflop']:.0f} GFLOP")


def bench_semdedup_vs_brute(n: int, d: int, n_clusters: int, eps: float, rate: float, seed: int = 1) -> None:
    x, _, _ = clustered_with_duplicates(n, d, n // 100, seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    sim, assign = nearest_centroid(x, spherical_kmeans(x, n_clusters, rng, niter=10, max_points_per_centroid=64))
    cluster_s = time.perf_counter() - start
    order = within_cluster_order(assign, sim, "hard", rng)
    fast_s, brute_s = [], []
    for _ in range(2):  # alternate, so machine noise hits both sides alike
        t = time.perf_counter()
        m_fast, flops = max_sim_to_earlier(x, order, assign)
        fast_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        m_ref = brute_max_sim(x, order, assign)
        brute_s.append(time.perf_counter() - t)
    same = np.array_equal(m_fast <= 1 - eps, m_ref <= 1 - eps)
    f, b = min(fast_s), min(brute_s)
    print(f"SemDeDup {n:,} rows, same clusters (k-means + assignment {cluster_s:.1f} s): within-cluster blocked "
          f"{f:.2f} s vs brute force {b:.2f} s, ratio brute/fast {b / f:.2f}x; same kept set: {same} "
          f"(max |dM| {np.abs(m_fast - m_ref).max():.1e}); blocked kernel {flops / f / 1e9:.0f} GFLOP/s "
          f"vs matmul {rate:.0f} GFLOP/s")


def bench_kcenter(n: int, d: int, k: int, seed: int = 2) -> None:
    x, _, _ = clustered_with_duplicates(n, d, 0, seed)
    start = time.perf_counter()
    centres = kcenter_greedy(x, k, first=0)
    wall = time.perf_counter() - start
    print(f"k-center greedy {k:,} of {n:,} x {d}: wall {wall:.1f} s (goal <= 30), {len(np.unique(centres)):,} "
          "distinct centres")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.01)
    args = ap.parse_args()
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, numpy {np.__version__}, "
          f"CUDA: {'yes' if torch.cuda.is_available() else 'none (GPU rows skipped)'}")
    rate = matmul_gflops()
    print(f"float32 matmul 4096^2: {rate:.0f} GFLOP/s")
    bench_semdedup(args.rows, args.dim, args.clusters, args.eps)  # first: its peak RSS is the one reported
    bench_semdedup_vs_brute(100_000, args.dim, max(args.clusters // 10, 1), args.eps, rate)
    bench_kcenter(100_000, 128, 10_000)


if __name__ == "__main__":
    main()
