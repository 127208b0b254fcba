"""Baselines: all data, and uniform random subsets."""

from __future__ import annotations

import numpy as np

from strategies.base import BaseStage, Selection, SelectionContext, class_quota


class Full(BaseStage):
    """Every candidate, in no particular order: the baseline every strategy is compared with."""

    keeps_all = True

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(np.sort(ctx.candidates))


class Random(BaseStage):
    """A uniform random subset of `fraction` of the original set, optionally equal per class."""

    def __init__(self, class_balance: bool = False) -> None:
        self.class_balance = class_balance

    def select(self, ctx: SelectionContext) -> Selection:
        cand = ctx.candidates
        k = min(ctx.n_target, len(cand))
        if not self.class_balance:
            return Selection(np.sort(ctx.rng.choice(cand, size=k, replace=False)))
        labels = ctx.labels[cand]
        quota = class_quota(labels, k, ctx.num_classes, ctx.rng)
        picked = [ctx.rng.choice(cand[labels == c], size=q, replace=False) for c, q in enumerate(quota) if q]
        return Selection(np.sort(np.concatenate(picked)))
