"""Curricula: an order over the selected samples plus a pacing function (Wu, Dyer & Neyshabur, ICLR 2021).

The trainer draws each batch uniformly from the first g(t)*n samples of the order at training progress t.
Orders are class-balanced as in the paper's code (`utils.balance_order`) unless `balance: false`.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from strategies.base import BaseStage, Selection, SelectionContext, SelectionError, check_choice

PACINGS = ("linear", "quad", "root", "step", "exp", "log")
ORDERINGS = ("curriculum", "anti", "random", "standard")
_BALANCED = ("curriculum", "anti")  # the orderings `balance` changes; random and standard are the same either way
_C = 10.0  # steepness of exp/log pacing, as in the paper's code (utils.get_pacing_function)


def pacing_value(name: str, a: float, b: float, t: float) -> float:
    """g(t): fraction of the ordered data available at progress t in [0, 1], clipped to at most 1.

    The paper's families with T = 1 (its formulas divided by N): the data starts at b and is all in at t = a.
      linear b + (1-b) t/a            quad b + (1-b) (t/a)^2          root b + (1-b) sqrt(t/a)
      step   b + floor(t/a)           exp  b + (1-b) (e^(10 t/a) - 1) / (e^10 - 1)
      log    b + (1-b) (1 + ln(t/a + e^-10) / 10)
    """
    r = t / a
    if name == "linear":
        g = b + (1 - b) * r
    elif name == "quad":
        g = b + (1 - b) * r**2
    elif name == "root":
        g = b + (1 - b) * math.sqrt(r)
    elif name == "step":
        g = b + math.floor(r)
    elif name == "exp":
        g = b + (1 - b) * math.expm1(min(_C * r, 700.0)) / math.expm1(_C)
    elif name == "log":
        g = b + (1 - b) * (1 + math.log(r + math.exp(-_C)) / _C)
    else:
        raise SelectionError(f"pacing={name}: expected one of {', '.join(PACINGS)}")
    return min(1.0, g)


def curriculum_label(ordering: str, pacing: str, balance: bool = True) -> str:
    """The report label of a curriculum: `curriculum-linear`, `anti-step`, ...; plain `standard` has no pacing.

    An unbalanced curriculum or anti-curriculum (a Winnow option, not the paper's) is `curriculum-linear-unbalanced`;
    `random` and `standard` do not depend on `balance`, so their label does not name it.
    """
    if ordering == "standard":
        return "standard"
    suffix = "-unbalanced" if ordering in _BALANCED and not balance else ""
    return f"{ordering}-{pacing}{suffix}"


def balance_order(order: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Wu et al.'s class-balanced interleaving of an easy -> hard `order` (their `utils.balance_order`).

    Group g holds the g-th easiest sample of every class that has more than g samples; groups come in order of g,
    and within a group the samples keep their order in `order` (easiest first). So every prefix of C * g samples
    holds exactly g of each class while g is at most the smallest class's size; after that the larger classes'
    remaining samples follow, still group by group. `labels` are per position of `order`'s range.
    """
    order = np.asarray(order, dtype=np.int64)
    lab = np.asarray(labels)[order]
    _, cls = np.unique(lab, return_inverse=True)
    by_class = np.argsort(cls, kind="stable")  # positions in `order`, class by class, each class easy -> hard
    counts = np.bincount(cls)
    rank = np.empty(len(order), dtype=np.int64)  # how many easier samples of the same class precede each one
    rank[by_class] = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[np.lexsort((np.arange(len(order)), rank))]


class Curriculum(BaseStage):
    """Order the candidates by a difficulty signal and pace them in.

    ordering: curriculum (easy -> hard), anti (hard -> easy), random (a fixed random order, still paced: the
    paper's random-curriculum), standard (no order, no pacing: plain i.i.d. training). A 2-D signal (per-epoch
    losses) is reduced to its mean over epochs. Keeps every candidate; put a coreset stage before it to subset.

    balance (default true, the paper's code): the easy -> hard order is interleaved by class (`balance_order`), so a
    paced prefix holds every class equally rather than only the easiest classes; anti is that order reversed (so
    with classes of unequal size it starts with the larger classes' hardest samples, as in the paper's code). The
    paper's random curriculum shuffles the balanced order, which is a uniform permutation either way, so `random`
    ignores `balance`. balance: false (a Winnow option) sorts by the score alone, ties by position.
    """

    reaches_target = False

    def __init__(self, signal: str = "el2n", ordering: str = "curriculum", pacing: str = "linear", a: float = 0.8,
                 b: float = 0.2, balance: bool = True) -> None:
        check_choice("ordering", ordering, ORDERINGS)
        check_choice("pacing", pacing, PACINGS)
        if not 0 < a:
            raise SelectionError(f"a={a}: expected a positive number (fraction of training until all data is in)")
        if not 0 < b <= 1:
            raise SelectionError(f"b={b}: expected a number in (0, 1] (starting fraction of the data)")
        if not isinstance(balance, bool):
            raise SelectionError(f"balance={balance}: expected true or false")
        self.signal, self.ordering, self.pacing, self.a, self.b = signal, ordering, pacing, a, b
        self.balance = balance
        self.needs = frozenset({signal}) if ordering in _BALANCED else frozenset()

    @staticmethod
    def identity_args(args: dict) -> dict:
        """The arguments that change what this stage does (config_hash keys on them).

        Standard training ignores the order and the pacing, a random curriculum ignores the signal and `balance`
        (a shuffle of any order is uniform): a sweep of orderings x pacings then runs `standard` once, not once per
        pacing, and random curricula keep the hashes they had before `balance` existed.
        """
        drop = {"standard": ("signal", "pacing", "a", "b", "balance"),
                "random": ("signal", "balance")}.get(args.get("ordering"), ())
        return {k: v for k, v in args.items() if k not in drop}

    def select(self, ctx: SelectionContext) -> Selection:
        idx = np.sort(ctx.candidates)
        if self.ordering == "standard":
            return Selection(idx)
        if self.ordering == "random":
            order = ctx.rng.permutation(len(idx))
        else:
            d = np.asarray(ctx.signals[self.signal], dtype=np.float64)
            d = (d.mean(1) if d.ndim == 2 else d)[idx]
            if self.balance:  # the paper's code: balance the easy -> hard order, reverse it for anti
                order = balance_order(np.argsort(d, kind="stable"), ctx.labels[idx])
                order = order if self.ordering == "curriculum" else order[::-1].copy()
            else:
                order = np.argsort(d if self.ordering == "curriculum" else -d, kind="stable")
        return Selection(idx, order=order, pacing=partial(pacing_value, self.pacing, self.a, self.b))
