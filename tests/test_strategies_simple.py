import numpy as np
import pytest

from strategies.base import Selection, SelectionContext, class_quota
from strategies.pipeline import Pipeline
from strategies.simple import Full, Random


def ctx(labels, fraction, seed=0, candidates=None):
    labels = np.asarray(labels)
    cand = np.arange(len(labels)) if candidates is None else np.asarray(candidates)
    return SelectionContext(cand, labels, int(labels.max()) + 1, fraction, np.random.default_rng(seed))


def brute_quota(counts, k):
    """Reference water-filling: hand out one sample at a time to the open class with the fewest so far."""
    quota = np.zeros(len(counts), int)
    for _ in range(min(k, sum(counts))):
        open_ = [c for c in range(len(counts)) if quota[c] < counts[c]]
        low = min(quota[c] for c in open_)
        quota[[c for c in open_ if quota[c] == low][0]] += 1
    return quota


@pytest.mark.parametrize("seed", range(5))
def test_class_quota_matches_water_filling(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 30, size=6)
    labels = np.repeat(np.arange(6), counts)
    for k in (0, 1, 7, int(counts.sum()) // 2, int(counts.sum())):
        q = class_quota(labels, k, 6, np.random.default_rng(seed))
        ref = brute_quota(counts, k)
        assert q.sum() == ref.sum() == min(k, counts.sum())
        assert (q <= counts).all()
        # same multiset of shares: remainders may land on different (equal-share) classes
        assert sorted(q) == sorted(ref)


def test_random_is_uniform_subset_of_requested_size():
    labels = np.repeat(np.arange(10), 100)
    sel = Random().select(ctx(labels, 0.3, seed=1))
    assert len(sel.indices) == 300 and len(np.unique(sel.indices)) == 300
    assert sel.indices.min() >= 0 and sel.indices.max() < 1000


def test_random_same_seed_same_indices_other_seed_differs():
    labels = np.repeat(np.arange(10), 100)
    a = Random().select(ctx(labels, 0.5, seed=3)).indices
    b = Random().select(ctx(labels, 0.5, seed=3)).indices
    c = Random().select(ctx(labels, 0.5, seed=4)).indices
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_random_class_balance_equal_counts_with_scarce_class():
    labels = np.concatenate([np.zeros(5, int), np.ones(200, int), np.full(200, 2)])
    sel = Random(class_balance=True).select(ctx(labels, 0.3, seed=0))  # 122 samples
    counts = np.bincount(labels[sel.indices], minlength=3)
    assert counts.sum() == 122
    assert counts[0] == 5  # the scarce class gives all it has; the others share the rest
    assert abs(counts[1] - counts[2]) <= 1


def test_fraction_below_one_per_class_still_selects_one():
    labels = np.repeat(np.arange(10), 10)
    sel = Random(class_balance=True).select(ctx(labels, 0.001))
    assert len(sel.indices) == 1


def test_full_and_fraction_one_keep_everything():
    labels = np.repeat(np.arange(3), 4)
    assert np.array_equal(Full().select(ctx(labels, 1.0)).indices, np.arange(12))
    assert np.array_equal(Random().select(ctx(labels, 1.0)).indices, np.arange(12))


def test_selection_rejects_duplicate_indices_and_bad_order():
    with pytest.raises(ValueError):
        Selection(np.array([1, 1, 2]))
    with pytest.raises(ValueError):
        Selection(np.array([1, 2]), order=np.array([0, 0]))


def test_pipeline_narrows_candidates_and_reports_each_stage():
    labels = np.repeat(np.arange(4), 25)
    pipe = Pipeline([Random(), Random(class_balance=True)])
    c = ctx(labels, 0.2)
    sel = pipe.select(c)
    assert len(sel.indices) == 20
    assert [(r.n_in, r.n_out) for r in pipe.reports] == [(100, 20), (20, 20)]
