"""Coresets against brute-force references written here, on small random inputs and several seeds."""

import numpy as np
import pytest

from strategies.base import SelectionContext, SelectionError
from strategies.coresets import (
    CCS,
    Herding,
    KCenterGreedy,
    Prototypes,
    ScoreCoreset,
    ccs_select,
    herding,
    kcenter_greedy,
    nearest_centroid,
    spherical_kmeans,
)


def ctx(labels, fraction, seed=0, **signals):
    labels = np.asarray(labels)
    return SelectionContext(np.arange(len(labels)), labels, int(labels.max()) + 1, fraction,
                            np.random.default_rng(seed), signals)


def brute_kcenter(x, k, first):
    x = x.astype(np.float64)
    chosen = [first]
    while len(chosen) < k:
        d = np.min([((x - x[c]) ** 2).sum(1) for c in chosen], axis=0)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    return np.array(chosen)


def brute_herding(x, k):
    x = x.astype(np.float64)
    mu, chosen = x.mean(0), []
    for t in range(1, k + 1):
        s = x[chosen].sum(0)
        obj = [np.inf if i in chosen else np.linalg.norm(mu - (s + x[i]) / t) for i in range(len(x))]
        chosen.append(int(np.argmin(obj)))
    return np.array(chosen)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("batch", [1, 4, 128])  # batch 1/4 forces many recomputed columns
def test_kcenter_greedy_equals_brute_force(seed, batch):
    x = np.random.default_rng(seed).normal(size=(120, 5)).astype(np.float32)
    assert np.array_equal(kcenter_greedy(x, 30, first=seed, batch=batch), brute_kcenter(x, 30, seed))


@pytest.mark.parametrize("seed", range(4))
def test_herding_equals_brute_force(seed):
    x = np.random.default_rng(seed).normal(size=(60, 4))
    assert np.array_equal(herding(x, 20), brute_herding(x, 20))


def test_kcenter_stage_uses_seeded_first_centre_and_class_balance():
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(90, 3)), np.repeat([0, 1, 2], 30)
    sel = KCenterGreedy(class_balance=True).select(ctx(labels, 0.2, seed=5, embeddings=emb)).indices
    # reference: per class, the same rng draws (class_quota, then one first centre per class in class order)
    r = np.random.default_rng(5)
    from strategies.base import class_quota

    quota = class_quota(labels, 18, 3, r)
    ref = []
    for c in range(3):
        pos = np.flatnonzero(labels == c)
        ref += list(pos[brute_kcenter(emb[pos], quota[c], int(r.integers(len(pos))))])
    assert np.array_equal(sel, np.sort(ref)) and np.bincount(labels[sel]).tolist() == [6, 6, 6]


def naive_farthest_point(x, k, first):
    """O(nk) farthest-point traversal on exact differences: a copy of a centre is at exactly 0."""
    x = x.astype(np.float64)
    mind, taken, chosen = np.full(len(x), np.inf), np.zeros(len(x), bool), []
    nxt = first
    for _ in range(k):
        chosen.append(nxt)
        taken[nxt] = True
        mind = np.minimum(mind, ((x - x[nxt]) ** 2).sum(1))
        best = max((mind[i] for i in range(len(x)) if not taken[i]), default=None)
        nxt = next((i for i in range(len(x)) if not taken[i] and mind[i] == best), None)  # lowest position
    return np.array(chosen)


@pytest.mark.parametrize("batch", [1, 4, 128])
def test_kcenter_greedy_on_exact_duplicates_equals_naive_reference(batch):
    # 2-30 distinct rows, each repeated 2-5 times, shuffled; k from the distinct count up to n. Before the fix a
    # copy of a centre could round to a distance below 0, be taken for a centre and crash the batch (KeyError).
    beyond_distinct = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        n_distinct, d = int(rng.integers(2, 31)), int(rng.integers(1, 17))
        rows_ = rng.normal(size=(n_distinct, d)).astype(np.float32)
        x = np.repeat(rows_, rng.integers(2, 6, size=n_distinct), axis=0)
        x = x[rng.permutation(len(x))]
        k, first = int(rng.integers(n_distinct, len(x) + 1)), int(rng.integers(len(x)))
        got = kcenter_greedy(x, k, first=first, batch=batch)
        assert np.array_equal(got, naive_farthest_point(x, k, first)), f"seed {seed}"
        beyond_distinct += k > n_distinct
    assert beyond_distinct > 50  # most cases take copies once every distinct row is a centre


def test_all_identical_inputs_kcenter_and_herding_still_return_k_distinct():
    x = np.ones((10, 3))
    assert np.array_equal(kcenter_greedy(x, 4, first=7), [7, 0, 1, 2])  # ties go to the lowest position
    assert np.array_equal(herding(x, 3), [0, 1, 2])


def test_score_coreset_keeps_hardest_or_easiest_and_fraction_edges():
    rng = np.random.default_rng(1)
    s, labels = rng.random(40), np.repeat(np.arange(4), 10)
    hard = ScoreCoreset("el2n").select(ctx(labels, 0.25, el2n=s)).indices
    assert np.array_equal(hard, np.sort(np.argsort(-s)[:10]))
    easy = ScoreCoreset("el2n", keep="easy").select(ctx(labels, 0.25, el2n=s)).indices
    assert np.array_equal(easy, np.sort(np.argsort(s)[:10]))
    assert np.array_equal(ScoreCoreset("el2n").select(ctx(labels, 1.0, el2n=s)).indices, np.arange(40))
    # below one sample per class, balanced: still one sample, the hardest of the class the quota drew
    one = ScoreCoreset("el2n", class_balance=True).select(ctx(labels, 0.01, el2n=s)).indices
    c = labels[one[0]]
    assert len(one) == 1 and one[0] == np.flatnonzero(labels == c)[np.argmax(s[labels == c])]


@pytest.mark.parametrize("keep", ["hard", "easy"])
def test_score_coreset_breaks_ties_by_a_seeded_random_subset(keep):
    n, labels = 200, np.zeros(200, int)
    tied = np.zeros(n)  # forgetting: everything learned once and never forgotten

    def kept(seed, scores=tied, class_balance=False, lab=labels):
        c = ctx(lab, 0.25, seed=seed, forgetting=scores)
        return ScoreCoreset("forgetting", keep=keep, class_balance=class_balance).select(c).indices

    a, b = kept(0), kept(1)
    assert len(a) == 50 and not np.array_equal(a, np.arange(50))  # not the lowest indices
    assert not np.array_equal(a, b) and np.array_equal(a, kept(0))  # differs between seeds, same for a seed
    assert np.mean(a) == pytest.approx((n - 1) / 2, abs=25)  # spread over the whole set, not one end
    # reference: a uniform subset among the tied is the first 50 of the seed's permutation
    assert np.array_equal(a, np.sort(np.random.default_rng(0).permutation(n)[:50]))
    # scores without ties still keep exactly the top k
    s = np.random.default_rng(2).permutation(n).astype(float)
    ref = np.argsort(-s if keep == "hard" else s)[:50]
    assert np.array_equal(kept(0, s), np.sort(ref)) and np.array_equal(kept(5, s), np.sort(ref))
    # a tie at the boundary: the 30 strictly better samples, then 20 of the 40 tied at the cut
    grade = np.r_[np.full(30, 5.0), np.full(40, 2.0), np.zeros(130)]
    where = np.random.default_rng(3).permutation(n)  # sample where[i] gets grade[i]
    scores = np.empty(n)
    scores[where] = grade if keep == "hard" else -grade
    sel = set(kept(4, scores).tolist())
    assert set(where[:30].tolist()) <= sel and len(sel & set(where[30:70].tolist())) == 20
    # with class balance each class's tied members are drawn at random too
    lab2 = np.repeat([0, 1], 100)
    bal = kept(0, tied, True, lab2)
    assert np.bincount(lab2[bal]).tolist() == [25, 25]
    assert not np.array_equal(bal, np.r_[np.arange(25), np.arange(100, 125)])


def brute_ccs(scores, k, beta, n_strata, rng):
    n = len(scores)
    cut = set(np.argsort(-scores, kind="stable")[: int(beta * n)].tolist())
    kept = [i for i in range(n) if i not in cut]
    lo, hi = min(scores[kept]), max(scores[kept])
    edges = np.linspace(lo, hi, n_strata + 1)
    strata = {j: [] for j in range(n_strata)}
    for i in kept:  # interval [e_j, e_j+1), the last one closed
        j = next((j for j in range(n_strata) if edges[j] <= scores[i] < edges[j + 1]), n_strata - 1)
        strata[j].append(i)
    strata = {j: m for j, m in strata.items() if m}
    budget, out = k, []
    while strata:
        j = min(strata, key=lambda j: (len(strata[j]), j))
        m = min(len(strata[j]), budget // len(strata))
        out += list(rng.choice(np.array(strata[j]), size=m, replace=False))
        budget -= m
        del strata[j]
    return np.sort(out)


@pytest.mark.parametrize("seed", range(4))
def test_ccs_equals_reference_strata_and_budget(seed):
    scores = np.random.default_rng(seed).gamma(2.0, size=300)  # skewed: strata of very different sizes
    got = ccs_select(scores, 100, 0.1, 10, np.random.default_rng(seed))
    ref = brute_ccs(scores, 100, 0.1, 10, np.random.default_rng(seed))
    assert np.array_equal(got, ref)
    assert 100 - 10 < len(got) <= 100 and not set(np.argsort(-scores)[:30]) & set(got)


def test_ccs_beta_leaving_too_few_is_an_error():
    with pytest.raises(SelectionError, match="beta=0.8"):
        CCS(beta=0.8).select(ctx(np.zeros(50, int), 0.5, el2n=np.random.default_rng(0).random(50)))


@pytest.mark.parametrize("seed", range(3))
def test_prototypes_score_is_distance_to_nearest_faiss_centroid(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sel = Prototypes(n_clusters=5).select(ctx(np.zeros(200, int), 0.3, seed=seed, embeddings=x)).indices
    centroids = spherical_kmeans(x, 5, np.random.default_rng(seed))
    dist = 1 - (x @ centroids.T).max(1)  # brute-force nearest centroid
    assert np.allclose(1 - nearest_centroid(x, centroids)[0], dist, atol=1e-6)
    assert np.array_equal(sel, np.sort(np.argsort(-dist, kind="stable")[:60]))


def test_prototypes_on_the_supervised_probe_is_labelled_so(compose_cfg):
    # Sorscher et al.'s prototypes are self-supervised; on the probe's supervised features the label must say so
    cfg = compose_cfg("strategy=prototypes").strategy
    assert cfg.embedding == "embeddings" and cfg.name == "prototypes-supervised"
    # on embeddings from a file (a self-supervised encoder's, as the paper) or the inputs: the paper's name
    assert compose_cfg("strategy=prototypes", "strategy.embedding=file").strategy.name == "prototypes"
    assert compose_cfg("strategy=prototypes", "strategy.embedding=raw").strategy.name == "prototypes"


def test_more_clusters_than_samples_is_a_clear_error():
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    with pytest.raises(SelectionError, match="n_clusters=20: expected between 1 and the number of candidates"):
        Prototypes(n_clusters=20).select(ctx(np.zeros(8, int), 0.5, embeddings=x))


def test_herding_stage_fraction_one_keeps_all():
    x = np.random.default_rng(0).normal(size=(12, 3))
    assert np.array_equal(Herding().select(ctx(np.zeros(12, int), 1.0, embeddings=x)).indices, np.arange(12))
