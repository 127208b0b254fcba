"""The environment a trial ran in: enough to tell why two runs of one config might differ."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
from pathlib import Path

PACKAGES = ("torch", "numpy", "faiss-cpu", "hydra-core", "omegaconf", "mlflow", "ray", "mnist1d",
            "scikit-learn", "nvidia-ml-py", "winnow-bench")
REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for manifests and benchmark headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[dict[str, str]]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = [{"name": torch.cuda.get_device_name(i), "cuda": torch.version.cuda or ""}
                for i in range(torch.cuda.device_count())]
    except Exception:
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        for g in gpus:
            g["driver"] = driver if isinstance(driver, str) else driver.decode()
    except Exception:
        pass
    return gpus


def git_state() -> tuple[str, bool]:
    """(commit, dirty) of the Winnow checkout; ("unknown", False) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except Exception:
        return "unknown", False


def environment_manifest() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    commit, dirty = git_state()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "gpus": _gpus(),
        "packages": versions,
        "git_commit": commit,
        "git_dirty": dirty,
    }
