"""Shared helpers: run the real entry point in a subprocess against a throwaway MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def store(tmp_path: Path) -> str:
    """A fresh SQLite tracking URI for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One dataset cache for the whole session, as a sweep would share it."""
    return str(tmp_path_factory.mktemp("cache"))


def run_cli(*overrides: str, cwd: Path | None = None, timeout: float = 300) -> CliResult:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness.run", *overrides], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def runs_of(uri: str, experiment: str = "winnow"):
    """All runs of `experiment` in the store as a pandas frame (MLflow's own search)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])
