"""Numerical kernels of the gradient-matching selectors CRAIG, GradMatch and GLISTER, on last-layer gradients.

numpy and scipy's LAPACK wrappers: arrays in, positions and weights out. The stages in strategies/adaptive.py
compute the inputs from the model (penultimate features, softmax - onehot) and map positions back. The reference
for every convention here is CORDS (decile-team/cords, SL strategies and helpers/omp_solvers.py); each deliberate
difference is stated where it happens.

A sample's proxy is the gradient of its cross-entropy loss w.r.t. the last linear layer (W, b): with err = softmax -
onehot and h the penultimate features, it is err outer [h, 1], C * (H + 1) numbers. Inner products of proxies factor
as (err_a . err_b) * (h_a . h_b + 1), so Gram matrices never need the proxies themselves. CORDS's `linear_layer:
false` (its default for CRAIG and GLISTER) uses the bias block alone: pass features with H = 0 columns.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from threadpoolctl import threadpool_limits


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise ValueError(f"k={k}: expected an integer between 1 and the number of samples ({n})")


def _rows(x: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or (n is not None and len(x) != n):
        want = f"{n} rows" if n is not None else "a 2-D array"
        raise ValueError(f"{name}: expected {want}, got shape {x.shape}")
    return x


def grad_proxies(err: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """Per-sample gradient of the cross-entropy loss w.r.t. the last layer (W, b), float32[m, C * (H + 1)].

    err = softmax - onehot, float[m, C]; feats = penultimate activations, float[m, H] (H may be 0: bias only). Row i
    is vec(err_i outer [feats_i, 1]): class-major, each class block H weight gradients then the bias gradient. (CORDS
    lays it out as the C bias gradients first, then the class-major weight blocks: a permutation of the coordinates,
    so every inner product, distance and OMP weight is the same.) Materialises m * C * (H + 1) floats: for Gram
    matrices use `proxy_gram`.
    """
    err = _rows(err, "err")
    feats = _rows(feats, "feats", len(err))
    aug = np.concatenate([feats, np.ones((len(err), 1), feats.dtype)], axis=1).astype(np.float32)
    return (err.astype(np.float32)[:, :, None] * aug[:, None, :]).reshape(len(err), -1)


def proxy_gram(err_a: np.ndarray, feats_a: np.ndarray, err_b: np.ndarray, feats_b: np.ndarray,
               chunk: int = 1024) -> np.ndarray:
    """Inner products of the proxies of a and b without materialising them: (Ea Eb^T) * (Ha Hb^T + 1), float32[ma, mb].

    Equals grad_proxies(err_a, feats_a) @ grad_proxies(err_b, feats_b).T at a C / (C * (H + 1)) share of its cost:
    the features' Gram is one GEMM over H, the errors' over C.
    """
    err_a, err_b = _rows(err_a, "err_a"), _rows(err_b, "err_b")
    feats_a, feats_b = _rows(feats_a, "feats_a", len(err_a)), _rows(feats_b, "feats_b", len(err_b))
    if err_a.shape[1] != err_b.shape[1] or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"proxy_gram: a has {err_a.shape[1]} classes x {feats_a.shape[1]} features, b has "
                         f"{err_b.shape[1]} x {feats_b.shape[1]}")
    f32 = np.float32
    err_a, err_b = err_a.astype(f32, copy=False), err_b.astype(f32, copy=False)
    gram = feats_a.astype(f32, copy=False) @ feats_b.astype(f32, copy=False).T
    gram += 1.0
    for s in range(0, len(gram), chunk):  # in row blocks: no second ma x mb temporary
        gram[s:s + chunk] *= err_a[s:s + chunk] @ err_b.T
    return gram


def craig_similarity(gram: np.ndarray) -> np.ndarray:
    """CRAIG's similarity from a square Gram matrix of proxies (one class): max(dist) - dist, float32[n, n].

    dist is the squared Euclidean distance between proxies (CORDS's `distance`, exponent 2, no square root), from the
    Gram as g_ii + g_jj - 2 g_ij, clipped at 0 (rounding); the diagonal is exactly 0, so sim_ii = max(dist) and
    sim >= 0, as facility location needs. The maximum is over this matrix, as CORDS takes it per class.
    """
    gram = _rows(gram, "gram")
    if gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram: expected a square matrix, got shape {gram.shape}")
    sq = np.diagonal(gram).astype(np.float32)
    dist = gram.astype(np.float32) * np.float32(-2.0)  # a new array: the caller's Gram is left as it was
    dist += sq[:, None]
    dist += sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    return np.subtract(dist.max(), dist, out=dist)


def _fl_gains(sim: np.ndarray, rows: np.ndarray, cur: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Marginal gains sum_j max(sim[i, j] - cur[j], 0) of `rows`, in sim's dtype, returned as float64.

    Why this form (not F(S + i) - F(S)): each term is non-increasing in cur under IEEE rounding and every row is
    summed the same way (numpy's pairwise sum along a contiguous row), so a gain computed earlier is an exact upper
    bound of a later one: lazy greedy stays exactly the naive greedy, ties included."""
    out = np.empty(len(rows))
    for s in range(0, len(rows), chunk):
        blk = sim[rows[s:s + chunk]]
        blk -= cur
        np.maximum(blk, 0, out=blk)
        out[s:s + chunk] = blk.sum(axis=1)
    return out


def facility_location(sim: np.ndarray, k: int, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy (Minoux 1978) maximisation of F(S) = sum_j max_{i in S} sim[i, j]: (picks, gain of each pick).

    sim >= 0, float[n, n] (F(empty) = 0, as apricot's FacilityLocationSelection that CORDS calls). Picks exactly the
    set, in the same order, that naive greedy picks with ties broken by the lowest index: a max-heap of (gain bound,
    index) whose top is taken once its bound was computed for the current set (no other bound can beat it, and
    bounds never under-estimate). Why `batch`: stale bounds at the top are re-evaluated `batch` at a time, one
    vectorised pass instead of one Python round trip each.
    """
    sim = _rows(sim, "sim")
    n = len(sim)
    if sim.shape[1] != n:
        raise ValueError(f"sim: expected a square matrix, got shape {sim.shape}")
    _check_k(k, n)
    if not np.issubdtype(sim.dtype, np.floating):
        sim = sim.astype(np.float64)
    cur = np.zeros(n, dtype=sim.dtype)  # each column's best similarity to the chosen set
    bound = _fl_gains(sim, np.arange(n), cur)
    fresh_at = np.zeros(n, dtype=np.int64)  # number of picks when each bound was computed
    heap = list(zip((-bound).tolist(), range(n)))
    heapq.heapify(heap)
    chosen, gains = np.empty(k, dtype=np.int64), np.empty(k)
    t = 0
    while t < k:
        neg_gain, i = heap[0]
        if fresh_at[i] == t:
            heapq.heappop(heap)
            chosen[t], gains[t] = i, -neg_gain
            np.maximum(cur, sim[i], out=cur)
            t += 1
            continue
        stale = []
        while heap and len(stale) < batch and fresh_at[heap[0][1]] != t:
            stale.append(heapq.heappop(heap)[1])
        rows = np.array(stale)
        fresh_at[rows] = t
        for g, r in zip(_fl_gains(sim, rows, cur).tolist(), stale):
            heapq.heappush(heap, (-g, r))
    return chosen, gains


def representation_counts(sim: np.ndarray, chosen: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """CRAIG's weights, aligned with `chosen`: how many j (of all n) have it as their most similar chosen sample.

    Ties go to the earliest entry of `chosen` (np.argmax, as CORDS's compute_gamma). float64, sums to n.
    """
    sim = _rows(sim, "sim")
    chosen = np.asarray(chosen, dtype=np.int64)
    if chosen.ndim != 1 or len(chosen) == 0:
        raise ValueError("chosen: expected a non-empty 1-D array of row positions")
    counts = np.zeros(len(chosen))
    for s in range(0, sim.shape[1], chunk):
        best = np.argmax(sim[chosen, s:s + chunk], axis=0)
        counts += np.bincount(best, minlength=len(chosen))
    return counts


def _one_blas_thread():
    """Why: the greedy loops make thousands of small BLAS calls (GEMVs, s x s triangular solves, GEMMs 10 wide); on
    2 cores with any other load OpenBLAS's two threads spin on each other: one OMP round of 500 steps took 5-10 s
    with two threads and 0.3 s with one, a GLISTER round 5x as long."""
    return threadpool_limits(1, user_api="blas")


def _tri_solve(low: np.ndarray, b: np.ndarray, trans: bool = False) -> np.ndarray:
    return solve_triangular(low, b, lower=True, trans=1 if trans else 0, check_finite=False)


def _chol_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x with low low^T x = b. Two triangular solves: scipy's cho_solve took 8x as long at 500 x 500 here."""
    return _tri_solve(low, _tri_solve(low, b), trans=True)


def _chol_delete(low: np.ndarray, p: int, s: int) -> None:
    """In place: the factor of the s x s block without row/column p, in its leading (s - 1) x (s - 1) block.

    Rows above p keep their entries; rows below move up one and their trailing block T becomes the factor of
    T T^T + l l^T (l: their old column p), O((s - p)^3) instead of refactoring the whole block."""
    tail = low[p + 1:s, p].copy()
    trailing = low[p + 1:s, p + 1:s]
    update = np.tril(trailing) @ np.tril(trailing).T + np.outer(tail, tail)
    low[p:s - 1, :p] = low[p + 1:s, :p]
    if s - 1 > p:
        low[p:s - 1, p:s - 1] = cholesky(update, lower=True, check_finite=False)


def omp_nonneg_gram(gram: np.ndarray, atoms_target: np.ndarray, target_sq: float, k: int, lam: float,
                    tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """`omp_nonneg` given only inner products: gram = atoms atoms^T (float[m, m], e.g. `proxy_gram`), atoms_target =
    atoms @ target (float[m]), target_sq = ||target||^2. GradMatch's own target, the sum of the atoms (CORDS's
    `valid: false`), is gram.sum(1) and gram.sum().

    Why the Gram: with it each step costs O(m s) (correlations c - G[:, S] w) plus O(s^2) (the new row of an
    incremental Cholesky factor of G_SS + lam I), where CORDS multiplies the d-dimensional atoms by the residual and
    re-solves the s x s system from scratch every step. The residual norm comes from the same quantities:
    ||target - atoms_S^T w||^2 = target_sq - w.c_S - lam ||w||^2 at the ridge solution w; that difference cancels,
    so ratios below about sqrt(machine epsilon of the Gram) (1e-8 for float64, 3e-4 for float32) are not resolved
    and a smaller tol does not stop early.
    """
    gram = _rows(gram, "gram")
    m = len(gram)
    if gram.shape[1] != m:
        raise ValueError(f"gram: expected a square matrix, got shape {gram.shape}")
    c = np.asarray(atoms_target, dtype=np.float64)
    if c.shape != (m,):
        raise ValueError(f"atoms_target: expected shape ({m},), got {c.shape}")
    _check_k(k, m)
    if not lam >= 0:
        raise ValueError(f"lam={lam}: expected a number >= 0")
    if not tol >= 0:
        raise ValueError(f"tol={tol}: expected a number >= 0")
    target_sq = float(target_sq)
    if not target_sq > 0:  # a zero target needs no atom
        return np.empty(0, dtype=np.int64), np.empty(0)
    with _one_blas_thread():
        return _omp_loop(gram, c, target_sq, k, lam, tol)


def _omp_loop(gram: np.ndarray, c: np.ndarray, target_sq: float, k: int, lam: float,
              tol: float) -> tuple[np.ndarray, np.ndarray]:
    m = len(gram)
    support: list[int] = []
    w = np.empty(0)
    taken = np.zeros(m, dtype=bool)
    # Gram columns of the support, in support order; Fortran order: the correlation GEMV reads it column-contiguous
    # (numpy's transposed float32 GEMV on C order ran 100x slower here)
    cols = np.empty((m, k), dtype=gram.dtype, order="F")
    chol = np.zeros((k, k))  # lower Cholesky factor of G_SS + lam I, leading s x s block
    tiny = 10 * np.finfo(gram.dtype).eps if np.issubdtype(gram.dtype, np.floating) else 1e-12
    for _ in range(k):  # CORDS runs k steps; a step can add one atom and drop several
        s = len(support)
        corr = c - (cols[:, :s] @ w.astype(cols.dtype)) if s else c.copy()
        corr[taken] = -np.inf
        j = int(np.argmax(corr))
        if not corr[j] > 0:  # no atom left that a positive weight could use
            break
        g = gram[j]  # = column j: the Gram is symmetric
        v = _tri_solve(chol[:s, :s], g[support].astype(np.float64)) if s else np.empty(0)
        pivot = float(g[j]) + lam - float(v @ v)
        if pivot <= tiny * (float(g[j]) + lam):  # lam = 0 only: atom j is (numerically) in the span of the support
            break
        chol[s, :s], chol[s, s] = v, math.sqrt(pivot)
        support.append(j)
        taken[j] = True
        cols[:, s] = g
        w = _chol_solve(chol[:s + 1, :s + 1], c[support])
        while len(w) and w.min() < 0:  # CORDS: drop the most negative, re-solve, until none is negative
            drop = int(np.argmin(w))
            taken[support.pop(drop)] = False
            s = len(support)
            cols[:, drop:s] = cols[:, drop + 1:s + 1]
            _chol_delete(chol, drop, s + 1)
            w = _chol_solve(chol[:s, :s], c[support]) if s else np.empty(0)
        if support:
            resid_sq = target_sq - float(w @ c[support]) - lam * float(w @ w)
            if math.sqrt(max(resid_sq, 0.0)) < tol * math.sqrt(target_sq):
                break
    return np.array(support, dtype=np.int64), w


def omp_nonneg(atoms: np.ndarray, target: np.ndarray, k: int, lam: float,
               tol: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """GradMatch's non-negative orthogonal matching pursuit (Killamsetty et al., ICML 2021; CORDS's
    OrthogonalMP_REG / OrthogonalMP_REG_Parallel_V1 with positive=True): (atom indices in support order, weights > 0).

    atoms float[m, d] (one gradient per row), target float[d]. k steps; each takes the atom not in the support with
    the largest positive correlation atoms @ residual, re-solves w = argmin ||target - atoms_S^T w||^2 + lam ||w||^2
    on the support, then while a weight is negative drops the most negative atom and re-solves (so the support can
    end with fewer than k atoms; a dropped atom may come back). Stops early when ||residual|| / ||target|| < tol.
    CORDS's GradMatch passes tol = eps (configs: 1e-100, i.e. never) and lam (configs: 0.5 per class, 0 per batch) on
    GPU; its CPU branch calls OrthogonalMP_REG with lam = 0 and the default tol 1e-4.

    Deliberate differences from CORDS: (1) an atom already in the support is not a candidate (with lam > 0 it still
    correlates with the residual, by lam w_i): OrthogonalMP_REG stops at such a repeat, and V1 (CORDS's GPU default)
    appends the atom's row a second time while not recording its index, which misaligns every later weight with its
    atom; (2) the first step's weight is the ridge solution too (CORDS: correlation / ||a||^2, lam ignored, and not
    checked for sign); (3) the steps stop when no candidate has a positive correlation, or (lam = 0) when the best
    one is numerically in the span of the support, where CORDS would spend its remaining steps re-picking it.
    Computes the m x m Gram in float64 (O(m^2 d)); for many atoms call `omp_nonneg_gram` with `proxy_gram`.
    """
    atoms = _rows(atoms, "atoms").astype(np.float64)
    target = np.asarray(target, dtype=np.float64)
    if target.shape != (atoms.shape[1],):
        raise ValueError(f"target: expected shape ({atoms.shape[1]},), got {target.shape}")
    return omp_nonneg_gram(atoms @ atoms.T, atoms @ target, float(target @ target), k, lam, tol)


def _val_gradient(z: np.ndarray, labels: np.ndarray, aug_val: np.ndarray) -> np.ndarray:
    """Mean cross-entropy gradient over the validation rows w.r.t. the last layer, float64[C, D], from logits z."""
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(z)), labels] -= 1.0
    return p.T @ aug_val / len(z)


def glister_greedy(feats: np.ndarray, err: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray,
                   weight: np.ndarray, bias: np.ndarray, k: int, eta: float, rng: np.random.Generator | None = None,
                   eps: float = 0.01, bias_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """GLISTER-ONLINE (Killamsetty et al., AAAI 2021), last-layer form as CORDS: (picks in order, gain of each pick).

    Greedily picks k training samples; the gain of i given the picks S so far is eta * <g_i, g_val(theta_S)>, the
    first-order decrease of the mean validation loss when theta_S takes a step -eta g_i. g_i = err_i outer [feats_i,
    1] (`grad_proxies`) at the current parameters theta = (weight[C, H], bias[C]), fixed for the round; g_val(theta_S)
    is the mean cross-entropy gradient over (val_feats, val_labels) at theta_S = theta - eta * sum_{i in S} g_i,
    recomputed exactly after each pick (closed form: only the last layer moves, so the validation logits are
    val_feats @ W_S^T + b_S). Both are loss gradients, as in CORDS (the paper's log-likelihood gradients are their
    negatives: the product is the same); the step is the sum over S, the validation gradient the mean.

    rng given: stochastic greedy (Mirzasoleiman et al. 2015, CORDS's 'Stochastic', its configs' default): each step
    takes the best of int(m / k * ln(1 / eps)) remaining samples drawn uniformly (all remaining when fewer); rng None:
    naive greedy over all remaining, ties to the lowest index. bias_only: CORDS's `linear_layer: false` (its default
    for GLISTER): gradients and the step use the bias block only; the logits still use the whole layer.

    Differences from CORDS: its gains leave out the factor eta (the same picks for eta > 0); its stochastic sample
    uses Python's `random` and raises when the sample is larger than what remains.
    """
    err = _rows(err, "err").astype(np.float64)
    m, n_classes = err.shape
    feats = _rows(feats, "feats", m).astype(np.float64)
    val_feats = _rows(val_feats, "val_feats").astype(np.float64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    weight, bias = np.asarray(weight, dtype=np.float64), np.asarray(bias, dtype=np.float64)
    n_feats = feats.shape[1]
    if weight.shape != (n_classes, n_feats) or bias.shape != (n_classes,) or val_feats.shape[1] != n_feats:
        raise ValueError(f"glister_greedy: expected weight ({n_classes}, {n_feats}), bias ({n_classes},) and "
                         f"val_feats (n, {n_feats}); got {weight.shape}, {bias.shape}, {val_feats.shape}")
    if val_labels.shape != (len(val_feats),) or len(val_feats) == 0:
        raise ValueError(f"val_labels: expected one label per validation row ({len(val_feats)}, at least one)")
    if val_labels.min() < 0 or val_labels.max() >= n_classes:
        raise ValueError(f"val_labels: expected labels in [0, {n_classes})")
    _check_k(k, m)
    if not eta > 0:
        raise ValueError(f"eta={eta}: expected a positive step size")
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps}: expected a number in (0, 1)")
    if bias_only:
        aug, aug_val = np.ones((m, 1)), np.ones((len(val_feats), 1))
    else:
        aug = np.concatenate([feats, np.ones((m, 1))], axis=1)
        aug_val = np.concatenate([val_feats, np.ones((len(val_feats), 1))], axis=1)
    z = val_feats @ weight.T + bias  # validation logits at theta_S
    sample = m if rng is None else max(1, int(m / k * math.log(1.0 / eps)))
    remaining = np.arange(m)
    chosen, gains = np.empty(k, dtype=np.int64), np.empty(k)
    with _one_blas_thread():
        for t in range(k):
            g_val = _val_gradient(z, val_labels, aug_val)
            if rng is None:
                cand_gains = eta * np.einsum("ic,ic->i", err, aug @ g_val.T)
                cand_gains[chosen[:t]] = -np.inf
                i = int(np.argmax(cand_gains))
                chosen[t], gains[t] = i, cand_gains[i]
            else:
                cand = rng.choice(remaining, size=min(sample, len(remaining)), replace=False)
                cand_gains = eta * np.einsum("ic,ic->i", err[cand], aug[cand] @ g_val.T)
                best = int(np.argmax(cand_gains))
                i = int(cand[best])
                chosen[t], gains[t] = i, cand_gains[best]
                remaining = remaining[remaining != i]
            # theta_S moves by -eta g_i = -eta err_i outer aug_i: each logit row v moves by -eta (aug_v . aug_i) err_i
            z -= eta * np.outer(aug_val @ aug[i], err[i])
    return chosen, gains
