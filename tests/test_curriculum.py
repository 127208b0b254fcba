"""Pacing values against the paper's formulas (Wu, Dyer & Neyshabur 2021, in samples and steps), and orderings."""

import math

import numpy as np
import pytest

from strategies.base import SelectionContext, SelectionError
from strategies.curriculum import PACINGS, Curriculum, curriculum_label, pacing_value


def paper_samples(name, a, b, step, total_steps, n):
    """The paper's g(step) in samples (its code, without the int() truncation), capped at n."""
    start, at = b * n, a * total_steps
    g = {
        "linear": lambda: start + (n - start) / at * step,
        "quad": lambda: start + (n - start) / at**2 * step**2,
        "root": lambda: start + (n - start) / at**0.5 * step**0.5,
        "step": lambda: start + n * (step // at),
        "exp": lambda: start + (n - start) / (math.exp(10) - 1) * (math.exp(10 * step / at) - 1),
        "log": lambda: start + (n - start) * (1 + math.log(step / at + math.exp(-10)) / 10),
    }[name]()
    return min(g, n)


@pytest.mark.parametrize("name", PACINGS)
@pytest.mark.parametrize("a, b", [(0.8, 0.2), (0.5, 0.1), (1.0, 0.04)])
def test_pacing_equals_paper_formula(name, a, b):
    n, total = 1000, 400
    for step in range(0, total + 1, 7):
        assert pacing_value(name, a, b, step / total) * n == pytest.approx(paper_samples(name, a, b, step, total, n),
                                                                          rel=1e-9, abs=1e-9)
    assert pacing_value(name, a, b, 0.0) == pytest.approx(b, abs=1e-4)
    assert pacing_value(name, a, b, 1.0) == pytest.approx(1.0, abs=1e-4)


def ctx(d, seed=0, labels=None):
    n = len(d)
    labels = np.zeros(n, int) if labels is None else np.asarray(labels)
    return SelectionContext(np.arange(n), labels, int(labels.max()) + 1, 1.0, np.random.default_rng(seed), {"el2n": d})


def test_orderings():
    d = np.random.default_rng(0).random(50)
    cur = Curriculum(ordering="curriculum").select(ctx(d))
    assert np.array_equal(cur.order, np.argsort(d)) and cur.pacing(0.0) == pytest.approx(0.2)
    assert np.array_equal(Curriculum(ordering="anti").select(ctx(d)).order, np.argsort(-d))
    rnd = Curriculum(ordering="random").select(ctx(d, seed=3))
    assert np.array_equal(rnd.order, np.random.default_rng(3).permutation(50)) and rnd.pacing is not None
    std = Curriculum(ordering="standard").select(ctx(d))
    assert std.order is None and std.pacing is None and len(std.indices) == 50
    assert Curriculum(ordering="random").needs == frozenset()


def test_losses_matrix_is_averaged_over_epochs():
    losses = np.random.default_rng(1).random((30, 5))
    c = SelectionContext(np.arange(30), np.zeros(30, int), 1, 1.0, np.random.default_rng(0), {"losses": losses})
    assert np.array_equal(Curriculum(signal="losses").select(c).order, np.argsort(losses.mean(1)))


def test_bad_curriculum_arguments():
    with pytest.raises(SelectionError, match="pacing=cubic: expected one of linear"):
        Curriculum(pacing="cubic")
    with pytest.raises(SelectionError, match="b=0: expected a number in \\(0, 1\\]"):
        Curriculum(b=0)


def reference_balance_order(order, labels):
    """The paper's utils.balance_order, loop for loop: group g = the g-th easiest of each class still having one,
    its members sorted by their position in the easy -> hard order; the groups of all classes first, then the
    groups only the larger classes reach."""
    class_orders = {}
    for i, sample in enumerate(order):
        class_orders.setdefault(labels[sample], []).append(i)
    length = {c: len(v) for c, v in class_orders.items()}
    new = []
    for g in range(max(length.values())):
        group = sorted(class_orders[c][g] for c in class_orders if g < length[c])
        new += [order[i] for i in group]
    return np.array(new)


def uneven_classes(seed):
    """4 classes of 30, 18, 12 and 40 samples; classes 0 and 1 are easy (low score), 2 and 3 hard."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1, 2, 3], [30, 18, 12, 40]))
    d = rng.random(len(labels)) + np.where(labels < 2, 0.0, 1.0)
    tied = rng.choice(len(d), 20, replace=False)  # a few exact ties: the order within a group is by position
    d[tied] = np.where(labels[tied] < 2, 0.5, 1.5)
    return d, labels


@pytest.mark.parametrize("seed", range(5))
def test_balanced_orders_equal_the_papers_balance_order(seed):
    d, labels = uneven_classes(seed)
    easy_first = reference_balance_order(np.argsort(d, kind="stable"), labels)
    cur = Curriculum(ordering="curriculum").select(ctx(d, labels=labels)).order
    assert np.array_equal(cur, easy_first)
    anti = Curriculum(ordering="anti").select(ctx(d, labels=labels)).order
    assert np.array_equal(anti, easy_first[::-1])  # the paper reverses the balanced order
    # random: the paper shuffles the balanced order, a uniform permutation whatever the balance
    for balance in (True, False):
        rnd = Curriculum(ordering="random", balance=balance).select(ctx(d, seed=3, labels=labels)).order
        assert np.array_equal(rnd, np.random.default_rng(3).permutation(len(d)))


@pytest.mark.parametrize("seed", range(5))
def test_every_prefix_of_the_balanced_curriculum_holds_classes_equally(seed):
    d, labels = uneven_classes(seed)
    sizes = np.bincount(labels)
    order = Curriculum().select(ctx(d, labels=labels)).order
    group_sizes = [(sizes > g).sum() for g in range(sizes.max())]  # classes that reach group g
    end = 0
    for g, size in enumerate(group_sizes):  # after g + 1 whole groups: min(size, g + 1) of each class
        end += size
        assert np.array_equal(np.bincount(labels[order[:end]], minlength=4), np.minimum(sizes, g + 1))
        # inside the group each class gets its (g + 1)-th sample or not yet
        for m in range(end - size, end):
            counts = np.bincount(labels[order[:m]], minlength=4)
            assert np.all((counts == np.minimum(sizes, g)) | (counts == np.minimum(sizes, g + 1)))
    assert np.bincount(labels[order[:48]]).tolist() == [12, 12, 12, 12]  # C * k with k = the smallest class
    # the old pure sort: the first 20% (the step pacing's start) holds only the two easy classes
    plain = Curriculum(balance=False).select(ctx(d, labels=labels)).order
    assert np.array_equal(plain, np.argsort(d, kind="stable"))
    assert set(labels[plain[:20]]) <= {0, 1}


def test_balance_is_labelled_and_part_of_identity_only_where_it_changes_the_order():
    assert curriculum_label("curriculum", "linear", True) == "curriculum-linear"
    assert curriculum_label("anti", "step", False) == "anti-step-unbalanced"
    assert curriculum_label("random", "step", False) == "random-step"
    assert curriculum_label("standard", "step", False) == "standard"
    args = {"signal": "el2n", "pacing": "linear", "a": 0.8, "b": 0.2, "balance": False}
    assert "balance" in Curriculum.identity_args({**args, "ordering": "curriculum"})
    assert "balance" in Curriculum.identity_args({**args, "ordering": "anti"})
    assert "balance" not in Curriculum.identity_args({**args, "ordering": "random"})
    assert "balance" not in Curriculum.identity_args({**args, "ordering": "standard"})
    with pytest.raises(SelectionError, match="balance=yes: expected true or false"):
        Curriculum(balance="yes")
