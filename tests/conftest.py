"""Shared helpers: run the real entry point in a subprocess against a throwaway MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# One torch (OpenMP) thread in this process, its subprocesses and their Ray workers. On 2 cores shared with another
# job, two-thread trials spin on each other: a 400-step trial trained in 18.3 s with 2 threads and 1.0 s with 1 at
# load average 4.8; on a quiet 2-core VM the default trial took 10.2 s with 2 and 10.9 s with 1. Reproductions
# replay the recorded thread count, so nothing here depends on it; a user's own environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# How long a subprocess may take before a test calls it hung: a guard, not a time limit. The slowest test here
# (three 6,000-step trials) took 68 s on a quiet 2-core VM and over 300 s at load average 5; CI machines differ 5x.
HANG_S = 1800


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


def run_cli(*overrides: str, cwd: Path | None = None, timeout: float = HANG_S, module: str = "harness.run",
            env: dict[str, str] | None = None) -> CliResult:
    """`python -m <module> <overrides>` in a subprocess (the real entry point), `env` added to this environment."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def runs_of(uri: str, experiment: str = "winnow"):
    """All runs of `experiment` in the store as a pandas frame (MLflow's own search)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment])


def make_npz(path: Path, n_train: int = 50, n_test: int = 20, features: int = 8, classes: int = 3,
             shift: float = 0.0, **override: np.ndarray) -> str:
    """An .npz data set in `dataset=npz`'s layout (X_train, y_train, X_test, y_test), seeded; `override`
    replaces or adds arrays (a malformed file), `shift` moves every feature (same shapes, other data)."""
    gen = np.random.default_rng(0)
    arrays = {"X_train": gen.normal(size=(n_train, features)) + shift, "y_train": gen.integers(0, classes, n_train),
              "X_test": gen.normal(size=(n_test, features)) + shift, "y_test": gen.integers(0, classes, n_test),
              **override}
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def write_npz(tmp_path: Path):
    """`write_npz(name="data.npz", **make_npz_args) -> path`: an .npz data set in this test's folder."""
    def write(name: str = "data.npz", **kwargs) -> str:
        return make_npz(tmp_path / name, **kwargs)

    return write


@pytest.fixture
def compose_cfg():
    """`compose_cfg(*overrides) -> DictConfig`: conf/ composed as `python -m harness.run` would, no run."""
    from harness.preflight import compose_config

    return lambda *overrides: compose_config(overrides)
