"""Selection kernels at scale: SemDeDup on 1M x 384, k-center greedy 10k of 100k x 128, and one round of the
gradient selectors (CRAIG, GradMatch, GLISTER) on 50k samples, 10 classes, last-layer proxies of 10 x 257.

    python scripts/bench_selection.py                    # the issue's sizes; results go in docs/benchmarks.md
    python scripts/bench_selection.py --only gradients   # just the gradient selectors

Prints, in one run: this machine's float32 matmul rate (4096^2), SemDeDup wall time, peak RSS and recall of
planted near-duplicates at 1M rows, the same kernel against a brute-force reference (full similarity matrix of
each cluster, one cluster at a time) at 100k rows with the same clusters, and k-center greedy's wall time. Then,
per class (5,000 samples, 500 picks each): CRAIG (Gram, similarity, lazy greedy facility location, weights) over
all 10 classes, its lazy greedy against a vectorised naive greedy on one class (same picks), GradMatch's
non-negative OMP over all 10 classes, and GLISTER's stochastic greedy over all 50k (CORDS's defaults); the peak
memory of one class's round by tracemalloc (numpy arrays allocated inside the round; the inputs excluded).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from strategies.base import SelectionContext, row_norms  # noqa: E402
from strategies.coresets import kcenter_greedy, nearest_centroid, spherical_kmeans  # noqa: E402
from strategies.dedup import SemDeDup, max_sim_to_earlier, within_cluster_order  # noqa: E402
from strategies.gradients import (  # noqa: E402
    craig_similarity,
    facility_location,
    glister_greedy,
    omp_nonneg_gram,
    proxy_gram,
    representation_counts,
)


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


def last_layer_state(n: int, n_classes: int, n_feats: int, seed: int = 3):
    """Synthetic mid-training last layer: ReLU features around one centre per class, a layer that half-knows the
    classes. Returns (labels, feats float32[n, H], err = softmax - onehot float32[n, C], weight, bias, accuracy)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n // n_classes)
    centres = rng.standard_normal((n_classes, n_feats), dtype=np.float32)
    feats = np.maximum(centres[labels] + 2.0 * rng.standard_normal((len(labels), n_feats), dtype=np.float32), 0)
    weight = 0.02 * centres + rng.standard_normal((n_classes, n_feats), dtype=np.float32) / np.sqrt(n_feats)
    bias = np.zeros(n_classes, np.float32)
    z = feats @ weight.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    err = p.copy()
    err[np.arange(len(labels)), labels] -= 1
    return labels, feats, err, weight, bias, float(np.mean(z.argmax(1) == labels))


def traced_peak_mb(fn) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 1e6


def craig_class(err: np.ndarray, feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sim = craig_similarity(proxy_gram(err, feats, err, feats))
    chosen, _ = facility_location(sim, k)
    return chosen, representation_counts(sim, chosen)


def gradmatch_class(err: np.ndarray, feats: np.ndarray, k: int, lam: float) -> tuple[np.ndarray, np.ndarray]:
    gram = proxy_gram(err, feats, err, feats)  # target: the class's gradient sum (CORDS's valid: false)
    return omp_nonneg_gram(gram, gram.sum(1, dtype=np.float64), gram.sum(dtype=np.float64), k, lam, tol=1e-100)


def naive_facility_location(sim: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    """Reference: every step, every remaining row's gain, vectorised in row chunks (the same float32 arithmetic)."""
    cur = np.zeros(len(sim), sim.dtype)
    gains = np.empty(len(sim))
    chosen = []
    for _ in range(k):
        for s in range(0, len(sim), chunk):
            blk = sim[s:s + chunk] - cur
            np.maximum(blk, 0, out=blk)
            gains[s:s + chunk] = blk.sum(axis=1)
        gains[chosen] = -np.inf
        i = int(np.argmax(gains))
        chosen.append(i)
        np.maximum(cur, sim[i], out=cur)
    return np.array(chosen)


def bench_gradient_selectors(n: int, n_classes: int, n_feats: int, fraction: float, n_val: int) -> None:
    labels, feats, err, weight, bias, acc = last_layer_state(n, n_classes, n_feats)
    per_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    k = int(np.ceil(fraction * len(per_class[0])))  # CORDS: ceil(budget * class size / n)
    print(f"gradient selectors: {n:,} samples, {n_classes} classes, proxies {n_classes} x {n_feats + 1}, "
          f"{k} picks per class; synthetic model accuracy {acc:.2f}")
    start = time.perf_counter()
    weights = [craig_class(err[i], feats[i], k)[1] for i in per_class]
    craig_s = time.perf_counter() - start
    mem = traced_peak_mb(lambda: craig_class(err[per_class[0]], feats[per_class[0]], k))
    print(f"CRAIG per class (Gram + similarity + lazy greedy + weights), {n_classes} classes: {craig_s:.1f} s "
          f"(goal <= 10), peak {mem:.0f} MB per class; weights sum to {sum(w.sum() for w in weights):,.0f}")

    idx = per_class[0]
    sim = craig_similarity(proxy_gram(err[idx], feats[idx], err[idx], feats[idx]))
    t = time.perf_counter()
    lazy, _ = facility_location(sim, k)
    lazy_s = time.perf_counter() - t
    t = time.perf_counter()
    naive = naive_facility_location(sim, k)
    naive_s = time.perf_counter() - t
    print(f"facility location, one class ({len(idx):,} x {len(idx):,}, {k} picks; naive on one class only: "
          f"{naive_s:.0f} s a class): lazy {lazy_s:.2f} s vs naive {naive_s:.1f} s, ratio lazy/naive "
          f"{lazy_s / naive_s:.3f}; same picks in the same order: {np.array_equal(lazy, naive)}")

    for lam in (0.5, 0.0):  # CORDS configs: 0.5 per class, 0 per batch
        start = time.perf_counter()
        picked = [len(gradmatch_class(err[i], feats[i], k, lam)[0]) for i in per_class]
        omp_s = time.perf_counter() - start
        mem = traced_peak_mb(lambda lam=lam: gradmatch_class(err[idx], feats[idx], k, lam))
        print(f"GradMatch per class (Gram + non-negative OMP, lam {lam}), {n_classes} classes: {omp_s:.1f} s "
              f"(goal <= 10), peak {mem:.0f} MB per class; atoms kept {sum(picked):,} of {k * n_classes:,} "
              f"(the rest filled at random)")

    val_labels, val_feats, *_ = last_layer_state(n_val, n_classes, n_feats, seed=4)
    budget = int(fraction * n)
    for bias_only in (True, False):  # CORDS's GLISTER default is linear_layer: false (bias gradients only)
        start = time.perf_counter()
        glister_greedy(feats, err, val_feats, val_labels, weight, bias, budget, eta=0.05,
                       rng=np.random.default_rng(0), bias_only=bias_only)
        print(f"GLISTER stochastic greedy over all {n:,} ({budget:,} picks, {n_val:,} validation rows, "
              f"{'bias only' if bias_only else 'weights and bias'}): {time.perf_counter() - start:.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--only", choices=("all", "semdedup", "kcenter", "gradients"), default="all")
    args = ap.parse_args()
    print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}, numpy {np.__version__}, "
          f"CUDA: {'yes' if torch.cuda.is_available() else 'none (GPU rows skipped)'}")
    rate = matmul_gflops()
    print(f"float32 matmul 4096^2: {rate:.0f} GFLOP/s")
    if args.only in ("all", "semdedup"):
        bench_semdedup(args.rows, args.dim, args.clusters, args.eps)  # first: its peak RSS is the one reported
        bench_semdedup_vs_brute(100_000, args.dim, max(args.clusters // 10, 1), args.eps, rate)
    if args.only in ("all", "kcenter"):
        bench_kcenter(100_000, 128, 10_000)
    if args.only in ("all", "gradients"):
        bench_gradient_selectors(50_000, 10, 256, 0.1, 5_000)


if __name__ == "__main__":
    main()
