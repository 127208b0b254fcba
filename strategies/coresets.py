"""Coresets: keep a `fraction` of the original set by a per-sample score or by geometry of the embeddings.

Scores are oriented "higher = harder" (harness/signals computes them that way), so `keep: hard` takes the
highest scores. Every selector takes `class_balance` (equal counts per class via `class_quota`).
"""

from __future__ import annotations

import numpy as np

from strategies.base import (
    BaseStage,
    Selection,
    SelectionContext,
    SelectionError,
    check_choice,
    l2_normalise,
    pick_balanced,
    rows,
)

KEEP = ("hard", "easy")


def top_k(scores: np.ndarray, k: int, keep: str = "hard", rng: np.random.Generator | None = None) -> np.ndarray:
    """Positions of the k highest (hard) or lowest (easy) scores.

    Ties: with `rng`, a uniform random subset of the tied scores (the positions are visited in a seeded random
    permutation, then sorted stably by score); without, the lower positions.
    """
    key = -scores if keep == "hard" else scores
    if rng is None:
        return np.argsort(key, kind="stable")[:k]
    perm = rng.permutation(len(key))
    return perm[np.argsort(key[perm], kind="stable")[:k]]


class ScoreCoreset(BaseStage):
    """Keep the hardest (or easiest) samples by one signal: EL2N, GraNd, forgetting, uncertainty, loss, ...

    Ties are broken by a seeded random permutation from the selection's generator: forgetting counts are small
    integers (many samples at 0, or at the same count), and taking the lowest indices among them would select by
    the dataset's storage order. One permutation is drawn per class with `class_balance`, after the quotas.
    """

    def __init__(self, signal: str, keep: str = "hard", class_balance: bool = False) -> None:
        check_choice("keep", keep, KEEP)
        self.signal, self.keep, self.class_balance = signal, keep, class_balance
        self.needs = frozenset({signal})

    def select(self, ctx: SelectionContext) -> Selection:
        scores = np.asarray(ctx.signals[self.signal], dtype=np.float64)
        if scores.ndim != 1:
            raise SelectionError(f"signal={self.signal}: expected one score per sample, got shape {scores.shape}")
        s = scores[ctx.candidates]
        return Selection(pick_balanced(ctx, ctx.n_target, self.class_balance,
                                       lambda pos, q: pos[top_k(s[pos], q, self.keep, ctx.rng)]))


def kcenter_greedy(x: np.ndarray, k: int, first: int, batch: int = 128) -> np.ndarray:
    """Exact farthest-point traversal (Gonzalez 1985; Sener & Savarese 2018): positions of k centres, in order.

    Centre 1 is `first`; each next centre is the point whose squared Euclidean distance to its nearest centre is
    largest (ties: lowest position). The argmax is exact, over all points at every step. Why batches: one new
    centre's distance column is a memory-bound GEMV over all of `x`; instead the columns of the `batch` points
    with the largest current distance (the likely next centres) are computed together as one compute-bound GEMM,
    and a column is recomputed only when the argmax falls outside the batch.

    Ties are equal distances up to the rounding of ||a||^2 - 2 a.b + ||b||^2 (about d * eps * ||x||^2): in that
    form exact copies of a row differ by +-1e-15 (a copy of a centre may even come out below 0), so without the
    tolerance the copy taken would depend on rounding, not position. Once every distinct row is a centre, the
    remaining copies (all at distance 0) follow in position order.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)  # float64: distances exact enough to match a reference
    n, d = x.shape
    k = min(k, n)
    sq = np.einsum("ij,ij->i", x, x)
    tie = 8.0 * (d + 2) * np.finfo(np.float64).eps * float(sq.max(initial=0.0))  # bound on the rounding above
    mind = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)  # not mind's sign: an untaken copy of a centre may round below 0
    chosen = np.empty(k, dtype=np.int64)
    cols: dict[int, int] = {}
    block = np.empty((0, n))
    nxt = int(first)
    for t in range(k):
        chosen[t] = nxt
        if nxt not in cols:
            if t == 0:
                cand = np.array([nxt])
            else:
                m = min(batch, n)
                cand = np.argpartition(-mind, m - 1)[:m]
                if nxt not in cand:
                    cand[0] = nxt
                cand = cand[~taken[cand]]  # centres already taken need no column
            block = sq[cand, None] - 2.0 * (x[cand] @ x.T) + sq[None, :]
            cols = {int(p): j for j, p in enumerate(cand)}
        np.minimum(mind, block[cols.pop(nxt)], out=mind)
        taken[nxt] = True
        mind[nxt] = -np.inf  # never a candidate again, whatever the tie tolerance
        if t + 1 < k:
            nxt = int(np.argmax(mind >= mind.max() - tie))  # lowest position among the (near-)equal farthest
    return chosen


def herding(x: np.ndarray, k: int) -> np.ndarray:
    """Kernel herding on embeddings (Welling 2009; iCaRL's exemplar rule): positions of k samples, in order.

    Step t picks the unpicked x minimising ||mu - (x + sum of picked)/t||, mu the mean of all x, so the mean of
    the picked set tracks mu. Expanded: argmin ||x||^2 - 2 x.(t mu - s), one GEMV per step.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n = len(x)
    k = min(k, n)
    mu = x.mean(0)
    sq = np.einsum("ij,ij->i", x, x)
    s = np.zeros(x.shape[1])
    taken = np.zeros(n, dtype=bool)
    chosen = np.empty(k, dtype=np.int64)
    for t in range(1, k + 1):
        obj = sq - 2.0 * (x @ (t * mu - s))
        obj[taken] = np.inf
        j = int(np.argmin(obj))
        chosen[t - 1] = j
        taken[j] = True
        s += x[j]
    return chosen


class KCenterGreedy(BaseStage):
    """k-center greedy coreset on embeddings: the set whose farthest sample is closest to it (a cover)."""

    def __init__(self, embedding: str = "embeddings", class_balance: bool = False, batch: int = 128) -> None:
        self.embedding, self.class_balance, self.batch = embedding, class_balance, batch
        self.needs = frozenset({embedding})

    def select(self, ctx: SelectionContext) -> Selection:
        emb = rows(ctx.signals[self.embedding], ctx.candidates)

        def pick(pos: np.ndarray, q: int) -> np.ndarray:
            return pos[kcenter_greedy(emb[pos], q, int(ctx.rng.integers(len(pos))), self.batch)]

        return Selection(pick_balanced(ctx, ctx.n_target, self.class_balance, pick))


class Herding(BaseStage):
    """Herding coreset on embeddings: the samples whose running mean best tracks the mean of all."""

    def __init__(self, embedding: str = "embeddings", class_balance: bool = False) -> None:
        self.embedding, self.class_balance = embedding, class_balance
        self.needs = frozenset({embedding})

    def select(self, ctx: SelectionContext) -> Selection:
        emb = rows(ctx.signals[self.embedding], ctx.candidates)
        return Selection(pick_balanced(ctx, ctx.n_target, self.class_balance,
                                       lambda pos, q: pos[herding(emb[pos], q)]))


def spherical_kmeans(x: np.ndarray, n_clusters: int, rng: np.random.Generator, niter: int = 20,
                     max_points_per_centroid: int = 256) -> np.ndarray:
    """Centroids (unit norm, float32) of FAISS spherical k-means on unit rows `x`.

    Trained on a seeded sample of at most `max_points_per_centroid * n_clusters` rows (FAISS's own default cap),
    so large N costs the assignment, not the training.
    """
    import faiss

    n, d = x.shape
    if n_clusters < 1 or n_clusters > n:
        raise SelectionError(f"n_clusters={n_clusters}: expected between 1 and the number of candidates ({n})")
    m = min(n, max_points_per_centroid * n_clusters)
    sample = x if m == n else x[np.sort(rng.choice(n, size=m, replace=False))]
    km = faiss.Kmeans(d, n_clusters, niter=niter, spherical=True, seed=int(rng.integers(2**31 - 1)),
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return km.centroids


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity to, index of) each row's nearest centroid; FAISS inner-product search."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sim, idx = index.search(x, 1)
    return sim[:, 0], idx[:, 0].astype(np.int64)


def prototypes_label(embedding: str) -> str:
    """The report label: `prototypes` on embeddings from elsewhere (a self-supervised encoder's file, or the raw
    inputs), `prototypes-supervised` on the supervised probe's features (Winnow's default, not the paper's)."""
    return "prototypes-supervised" if embedding in ("embeddings", "embeddings_early") else "prototypes"


class Prototypes(BaseStage):
    """Prototypes (Sorscher et al. 2022): score = cosine distance to the nearest spherical k-means centroid.

    The paper's metric is *self-supervised*: k-means on SwAV embeddings, no labels. Winnow's default
    (`embedding: embeddings`) clusters the supervised probe's penultimate features instead, a deviation, so that
    config is named `prototypes-supervised`; for the paper's method pass `embedding: file` with self-supervised
    embeddings (`embeddings.path`). keep: hard keeps the samples farthest from their prototype (the paper's choice
    for large data), easy the nearest (its choice for small data).
    """

    def __init__(self, embedding: str = "embeddings", n_clusters: int = 10, keep: str = "hard",
                 class_balance: bool = False, niter: int = 20) -> None:
        check_choice("keep", keep, KEEP)
        if n_clusters < 1:
            raise SelectionError(f"n_clusters={n_clusters}: expected a positive integer")
        self.embedding, self.n_clusters, self.keep = embedding, n_clusters, keep
        self.class_balance, self.niter = class_balance, niter
        self.needs = frozenset({embedding})

    def select(self, ctx: SelectionContext) -> Selection:
        x = l2_normalise(rows(ctx.signals[self.embedding], ctx.candidates))
        centroids = spherical_kmeans(x, self.n_clusters, ctx.rng, self.niter)
        sim, _ = nearest_centroid(x, centroids)
        dist = 1.0 - sim.astype(np.float64)
        return Selection(pick_balanced(ctx, ctx.n_target, self.class_balance,
                                       lambda pos, q: pos[top_k(dist[pos], q, self.keep)]))


def ccs_select(scores: np.ndarray, k: int, beta: float, n_strata: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage-centric selection (Zheng et al. ICLR 2023, Algorithm 1): positions of at most k samples.

    Cut the hardest floor(beta * n) (highest scores); split the rest into `n_strata` equal-width score intervals;
    visit strata from the smallest, giving each min(its size, floor(budget left / strata left)) samples drawn
    uniformly. The floor can leave up to n_strata - 1 of the budget unused, as in the paper.
    """
    n = len(scores)
    n_cut = int(beta * n)
    kept = np.sort(np.argsort(-scores, kind="stable")[n_cut:])
    if k > len(kept):
        raise SelectionError(f"beta={beta}: cutting the hardest {n_cut} of {n} leaves {len(kept)}, fewer than the "
                             f"target {k}; expected beta <= 1 - fraction")
    s = scores[kept]
    edges = np.linspace(s.min(), s.max(), n_strata + 1)
    stratum = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_strata - 1)
    groups = [kept[stratum == i] for i in range(n_strata)]
    open_ = [i for i in range(n_strata) if len(groups[i])]
    budget, picked = k, []
    while open_:
        i = min(open_, key=lambda j: (len(groups[j]), j))
        m = min(len(groups[i]), budget // len(open_))
        picked.append(rng.choice(groups[i], size=m, replace=False))
        budget -= m
        open_.remove(i)
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


class CCS(BaseStage):
    """Coverage-centric coreset selection: drop the hardest beta, then sample evenly across the score range."""

    def __init__(self, signal: str = "el2n", beta: float = 0.1, n_strata: int = 50,
                 class_balance: bool = False) -> None:
        if not 0 <= beta < 1:
            raise SelectionError(f"beta={beta}: expected a number in [0, 1)")
        if n_strata < 1:
            raise SelectionError(f"n_strata={n_strata}: expected a positive integer")
        self.signal, self.beta, self.n_strata, self.class_balance = signal, beta, n_strata, class_balance
        self.needs = frozenset({signal})

    def select(self, ctx: SelectionContext) -> Selection:
        s = np.asarray(ctx.signals[self.signal], dtype=np.float64)[ctx.candidates]
        return Selection(pick_balanced(ctx, ctx.n_target, self.class_balance,
                                       lambda pos, q: pos[ccs_select(s[pos], q, self.beta, self.n_strata, ctx.rng)]))
