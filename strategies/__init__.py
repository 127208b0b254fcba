"""Data-selection strategies: pure functions of arrays, returning a `Selection`.

Nothing in this package trains, logs, times or reads config files (see docs/architecture.md).
"""

from strategies.base import Pacing, Selection, SelectionContext, Stage

__all__ = ["Pacing", "Selection", "SelectionContext", "Stage"]
