"""Dedup against brute-force references: SemDeDup's per-cluster rule, kNN-threshold components, exact bytes."""

import numpy as np
import pytest

from strategies.base import SelectionContext, SelectionError
from strategies.coresets import nearest_centroid, spherical_kmeans
from strategies.dedup import ExactDedup, KnnDedup, SemDeDup, max_sim_to_earlier, within_cluster_order


def ctx(n, fraction=1.0, seed=0, **signals):
    return SelectionContext(np.arange(n), np.zeros(n, int), 1, fraction, np.random.default_rng(seed), signals)


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def with_near_duplicates(seed, n=150, d=8, n_dup=40, noise=0.02):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    src = rng.choice(n, n_dup, replace=False)
    return unit(np.vstack([x, x[src] + noise * rng.normal(size=(n_dup, d))]))


def brute_semdedup_keep(x, assign, sim_c, keep, eps):
    """The paper's rule, one cluster at a time: order (hard: farthest from centroid first), full similarity
    matrix, M_j = max of its column above the diagonal (0 if none), drop when M_j > 1 - eps."""
    kept = np.zeros(len(x), bool)
    for c in np.unique(assign):
        idx = np.flatnonzero(assign == c)
        key = sim_c[idx] if keep == "hard" else -sim_c[idx]
        idx = idx[np.lexsort((idx, key))]
        s = x[idx].astype(np.float64) @ x[idx].astype(np.float64).T
        m = np.triu(s, 1).max(0)
        kept[idx] = m <= 1 - eps
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_semdedup_rule_equals_brute_force_per_cluster(seed, keep):
    x = with_near_duplicates(seed)
    rng = np.random.default_rng(seed)
    assign = rng.integers(0, 6, len(x))
    assign[7] = 6  # a cluster of one: always kept
    sim_c = rng.random(len(x)).astype(np.float32)
    order = within_cluster_order(assign, sim_c, keep, rng)
    m, _ = max_sim_to_earlier(x, order, assign, block=7)  # small blocks: exercise the blocking
    for eps in (0.01, 0.1, 0.5):
        assert np.array_equal(m <= 1 - eps, brute_semdedup_keep(x, assign, sim_c, keep, eps))
    assert m[7] == 0


@pytest.mark.parametrize("seed", range(3))
def test_semdedup_stage_equals_reference_and_target_fraction(seed):
    x = with_near_duplicates(seed)
    sel = SemDeDup(n_clusters=4, eps=0.05).select(ctx(len(x), seed=seed, embeddings=x)).indices
    rng = np.random.default_rng(seed)  # same draws as the stage: k-means sample/seed
    sim, assign = nearest_centroid(x, spherical_kmeans(x, 4, rng))
    assert np.array_equal(sel, np.flatnonzero(brute_semdedup_keep(x, assign, sim, "hard", 0.05)))
    assert len(sel) <= 150  # the 40 planted copies (and possibly their sources) go
    stage = SemDeDup(n_clusters=4)
    target = stage.select(ctx(len(x), fraction=100 / 190, seed=seed, embeddings=x))
    assert len(target.indices) == 100
    again = SemDeDup(n_clusters=4, eps=stage.info["eps"]).select(ctx(len(x), seed=seed, embeddings=x))
    assert np.array_equal(again.indices, target.indices)


def test_semdedup_errors_more_clusters_than_samples_and_eps_range():
    x = unit(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(SelectionError, match="n_clusters=10: expected between 1 and the number of candidates"):
        SemDeDup(n_clusters=10, eps=0.1).select(ctx(5, embeddings=x))
    for eps in (0, 1, 1.5, -0.1):
        with pytest.raises(SelectionError, match=f"eps={eps}: expected a number in \\(0, 1\\)"):
            SemDeDup(eps=eps)
        with pytest.raises(SelectionError, match=f"eps={eps}"):
            KnnDedup(eps=eps)


def brute_knn_keep(x, k, eps):
    x = x.astype(np.float64)
    s = x @ x.T
    parent = list(range(len(x)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(x)):
        others = [j for j in np.argsort(-s[i], kind="stable") if j != i][:k]
        for j in others:
            if s[i, j] > 1 - eps:
                parent[max(find(i), find(j))] = min(find(i), find(j))
    return np.array(sorted({find(i) for i in range(len(x))}))  # roots are the lowest member


@pytest.mark.parametrize("seed", range(4))
def test_knn_dedup_equals_brute_force_components(seed):
    x = with_near_duplicates(seed, noise=0.05)
    for eps in (0.005, 0.02, 0.2):
        got = KnnDedup(k_neighbors=3, eps=eps).select(ctx(len(x), embeddings=x)).indices
        assert np.array_equal(got, brute_knn_keep(x, 3, eps))


def test_knn_dedup_bisection_hits_target_and_reports_eps():
    x = with_near_duplicates(1, noise=0.05)
    stage = KnnDedup(k_neighbors=4)
    sel = stage.select(ctx(len(x), fraction=120 / 190, embeddings=x)).indices
    eps = stage.info["eps"]
    assert len(sel) <= 120 and np.array_equal(sel, brute_knn_keep(x, 4, eps))
    assert len(brute_knn_keep(x, 4, eps * 0.999)) >= len(sel)


def test_exact_dedup_keeps_first_occurrence_of_each_byte_string():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    x[[5, 9, 20]] = x[2]
    x[25] = x[24]
    ref = sorted({r.tobytes(): i for i, r in reversed(list(enumerate(x)))}.values())
    got = ExactDedup().select(ctx(30, inputs=x)).indices
    assert np.array_equal(got, ref) and len(got) == 26


def test_all_identical_inputs_dedup_to_one():
    x = np.ones((20, 4), np.float32)
    assert np.array_equal(ExactDedup().select(ctx(20, inputs=x)).indices, [0])
    assert np.array_equal(KnnDedup(k_neighbors=19, eps=0.01).select(ctx(20, embeddings=x)).indices, [0])
    sel = SemDeDup(n_clusters=1, eps=0.01).select(ctx(20, embeddings=x)).indices
    assert len(sel) == 1


def planted_copies(seed, n_classes=10, per_class=30, d=64, copy_rate=0.24):
    """Raw inputs with planted near-copies, and features that collapse within a class as a supervised probe's do.

    Returns (raw unit rows, collapsed unit rows, labels, positions of the copies, the position each copies)."""
    rng = np.random.default_rng(seed)
    n_base = n_classes * per_class
    n_copy = int(round(copy_rate * n_base / (1 - copy_rate)))  # copies are 24% of the whole set
    labels = np.repeat(np.arange(n_classes), per_class)
    base = rng.normal(size=(n_base, d))
    src = rng.choice(n_base, n_copy, replace=False)
    raw = np.vstack([base, base[src] + 0.01 * rng.normal(size=(n_copy, d))])
    labels = np.r_[labels, labels[src]]
    means = rng.normal(size=(n_classes, 16))
    collapsed = means[labels] + 0.02 * rng.normal(size=(len(labels), 16))
    return unit(raw), unit(collapsed), labels, np.arange(n_base, n_base + n_copy), src


@pytest.mark.parametrize("seed", range(3))
def test_dedup_on_raw_inputs_finds_exactly_the_planted_copies_and_collapsed_features_do_not(seed):
    raw, collapsed, labels, copies, src = planted_copies(seed)
    n = len(raw)
    for stage in (SemDeDup(n_clusters=10, eps=0.02), KnnDedup(k_neighbors=16, eps=0.02)):
        kept = stage.select(ctx(n, seed=seed, embeddings=raw)).indices
        removed = np.setdiff1d(np.arange(n), kept)
        # exactly one of each (original, copy) pair goes, nothing else: precision and recall 1
        assert len(removed) == len(copies)
        assert set(removed.tolist()) <= set(copies.tolist()) | set(src.tolist())
        assert all((c in kept) != (s in kept) for c, s in zip(copies, src))
        # features collapsed by class: most of every class looks like a copy
        removed_collapsed = n - len(stage.select(ctx(n, seed=seed, embeddings=collapsed)).indices)
        assert removed_collapsed / n > 0.6 and len(copies) / removed_collapsed < 0.4


def test_knn_dedup_config_defaults_to_raw_inputs(compose_cfg):
    assert compose_cfg("strategy=knn_dedup").strategy.embedding == "raw"
