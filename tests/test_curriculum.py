"""Pacing values against the paper's formulas (Wu, Dyer & Neyshabur 2021, in samples and steps), and orderings."""

import math

import numpy as np
import pytest

from strategies.base import SelectionContext, SelectionError
from strategies.curriculum import PACINGS, Curriculum, pacing_value


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


def ctx(d, seed=0):
    n = len(d)
    return SelectionContext(np.arange(n), np.zeros(n, int), 1, 1.0, np.random.default_rng(seed), {"el2n": d})


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
