"""Run stages one after another; each narrows the candidates of the next."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from strategies.base import Selection, SelectionContext, Stage
from strategies.dynamic import DynamicStage, is_dynamic


@dataclass(frozen=True)
class StageReport:
    """What one stage did: for the run's record ("how many it removed", and e.g. the eps it found)."""

    name: str
    n_in: int
    n_out: int
    info: dict[str, float] = field(default_factory=dict)

    @property
    def removed(self) -> int:
        return self.n_in - self.n_out


class Pipeline:
    """Stages in order, e.g. exact dedup -> semantic dedup -> coreset.

    The final `fraction` (in the context) is relative to the original training set; stages that
    only remove (dedup) ignore it. The result is the last stage's Selection (weights, order, pacing).
    """

    def __init__(self, stages: Sequence[Stage], names: Sequence[str] | None = None) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        self.stages = list(stages)
        self.names = list(names) if names is not None else [type(s).__name__ for s in self.stages]
        self.needs = frozenset().union(*(s.needs for s in self.stages))
        # Whether some stage cuts to `fraction` (a coreset, or dedup with eps: null); dedup with a fixed eps
        # and curricula do not.
        self.reaches_target = any(s.reaches_target for s in self.stages)
        # A dynamic stage (strategies/dynamic.py) keeps its candidates here and selects during training; it comes
        # last (harness/build.py checks), so the static stages before it fix the pool it selects from.
        self.dynamic: DynamicStage | None = next((s for s in self.stages if is_dynamic(s)), None)
        self.reports: list[StageReport] = []

    def select(self, ctx: SelectionContext,
               observe: Callable[[str], AbstractContextManager] | None = None) -> Selection:
        """`observe(name)` wraps each stage (the harness times stages with it; the pipeline itself does not)."""
        self.reports = []
        result = Selection(np.sort(ctx.candidates))
        for name, stage in zip(self.names, self.stages):
            with observe(name) if observe else nullcontext():
                out = stage.select(ctx.with_candidates(result.indices))
            info = dict(stage.info)
            self.reports.append(StageReport(name, len(result.indices), len(out.indices), info))
            result = out
        return result
