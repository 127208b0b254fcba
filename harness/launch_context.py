"""What a launcher task tells the trial it runs: tags for the MLflow run and data-parallel worker resources.

The Ray launcher (harness/launcher.py) sets `WINNOW_LAUNCH_CONTEXT` around each trial; the trial
(harness/trial.py) and data-parallel training (harness/ddp.py) read it here, so neither imports the launcher.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CONTEXT_ENV = "WINNOW_LAUNCH_CONTEXT"


def _context() -> dict[str, Any]:
    return json.loads(os.environ.get(CONTEXT_ENV, "{}"))


@contextmanager
def launch_context(context: dict[str, Any]) -> Iterator[None]:
    """Make `context` ({"tags": ..., "worker_resources": ...}) visible to the trial run inside this block."""
    os.environ[CONTEXT_ENV] = json.dumps(context)
    try:
        yield
    finally:
        os.environ.pop(CONTEXT_ENV, None)


def launch_tags() -> dict[str, str]:
    """Tags for the trial's MLflow run when it runs inside a launcher task; {} otherwise."""
    return {k: str(v) for k, v in _context().get("tags", {}).items()}


def ddp_worker_resources() -> dict[str, float] | None:
    """Per-worker Ray resources for a data-parallel trial launched by the sweep; None outside a sweep."""
    return _context().get("worker_resources")
