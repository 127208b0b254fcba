"""Hydra launcher plugin on Ray core: `python -m harness.run -m hydra/launcher=ray ...`.

Each job of a sweep becomes one Ray task with the trial's resources. The work (resume, retries,
progress, summary) lives in `harness.launcher`; this module only registers the config and stays cheap
to import, since Hydra imports every plugin module on start-up.
"""

# No `from __future__ import annotations`: Hydra execs plugin modules outside sys.modules, where
# dataclasses cannot resolve string annotations.
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.winnow_ray_launcher.ray_launcher.RayLauncher"
    address: str | None = None  # null: start a local Ray instance; `auto` or `ray://host:10001` joins a cluster
    num_cpus: float = 1.0  # per trial (per DDP worker when trainer.workers > 1); torch uses this many threads
    num_gpus: float = 0.0  # per trial; fractional packs trials on one GPU (0.25: four per GPU)
    memory: int | None = None  # bytes per trial, reserved in Ray's scheduler
    max_retries: int = 2  # re-runs of a trial whose worker process or node died (not of one that raised)
    rerun_finished: bool = False  # true: also run trials whose config hash already has a FINISHED run
    log_to_driver: bool = False  # true: stream the workers' stdout/stderr to this console
    init: dict[str, Any] = field(default_factory=dict)  # extra ray.init() arguments for a local instance


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf)


class RayLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from harness.errors import UserError, exit_user_error
        from harness.launcher import launch  # ray, mlflow and tqdm only when a sweep actually launches

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        try:
            return launch(self.hydra_context, self.task_function, self.config, job_overrides, initial_job_idx)
        except UserError as e:  # the sweep's own input (a trial's bad input fails that trial only): one line, exit 2
            exit_user_error("winnow", e)
