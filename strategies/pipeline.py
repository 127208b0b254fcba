"""Run stages one after another; each narrows the candidates of the next."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from strategies.base import Selection, SelectionContext, Stage


@dataclass(frozen=True)
class StageReport:
    """What one stage did: for the run's record ("how many it removed")."""

    name: str
    n_in: int
    n_out: int


class Pipeline:
    """Stages in order, e.g. exact dedup -> semantic dedup -> coreset.

    The final `fraction` (in the context) is relative to the original training set; stages that
    only remove (dedup) ignore it. The result is the last stage's Selection (weights, order, pacing).
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)
        self.needs = frozenset().union(*(s.needs for s in self.stages))
        self.reports: list[StageReport] = []

    def select(self, ctx: SelectionContext) -> Selection:
        self.reports = []
        result = Selection(np.sort(ctx.candidates))
        for stage in self.stages:
            out = stage.select(ctx.with_candidates(result.indices))
            self.reports.append(StageReport(type(stage).__name__, len(result.indices), len(out.indices)))
            result = out
        return result
