"""Check every job of a command line before Hydra starts any of them.

Composes each job's config (a sweep is expanded with Hydra's own sweep parser) and validates it,
so a typo in the third value of a sweep stops the command before the first trial trains.
Errors come out as one line: `winnow: error: <key>=<value>: <what was expected>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from harness.config import register_schemas, validate
from harness.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
_HYDRA_FLAGS_WITHOUT_JOB = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i",
                            "--shell-completion", "-sc", "--resolve", "--package", "-p")
# Hydra's run modes, short and long: it takes one per command and answers two with a traceback.
_MODES = {"-r": "--run", "-m": "--multirun", "-c": "--cfg", "-i": "--info", "-sc": "--shell-completion"}


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """conf/ composed with `overrides` as `python -m harness.run` composes one job, without running it (tests and
    benchmarks build trials from it)."""
    register_schemas()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _one_line(e: Exception) -> str:
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, _, choice = e.missing_cfg_file.rpartition("/")
        options = ", ".join(sorted(e.options or []))
        return f"{group}={choice}: no such {group}; expected one of: {options}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(dict.fromkeys(lines[:1] + lines[-1:])) or type(e).__name__


def expand_jobs(overrides: list[str]) -> list[list[str]]:
    """One override list per job, with sweeps (a,b / range() / choice()) expanded as Hydra's basic sweeper does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def _is_hydra_override(override: str) -> bool:
    """`hydra.run.dir=...`, `hydra/launcher=ray`, `+hydra.job.env_set.X=1`: Hydra's own config, not the job's."""
    return override.lstrip("+~").startswith("hydra")


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def _check_launcher(job: list[str]) -> bool:
    """Composes the job with Hydra's config; checks `hydra.launcher` values when it is Winnow's Ray launcher. True
    when a sweep's trials run in this process (Hydra's basic launcher), so this machine's devices are theirs."""
    try:  # the whole job: an experiment (+experiment=...) may choose the launcher
        cfg = compose(config_name="config", overrides=job, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(_one_line(e)) from None
    target = cfg.hydra.launcher.get("_target_", "")
    if target.startswith("hydra_plugins.winnow_ray_launcher"):
        from harness.launcher import validate_launcher

        validate_launcher(cfg.hydra.launcher)
    return target == BASIC_LAUNCHER


def preflight(argv: list[str]) -> int:
    """Validate every job in `argv`; returns the number of jobs. Raises UserError with one line."""
    modes = [a.split("=")[0] for a in argv if a.split("=")[0] in (*_MODES, *_MODES.values())]
    if len({_MODES.get(m, m) for m in modes}) > 1:
        raise UserError(f"{' and '.join(dict.fromkeys(modes))}: expected only one of {', '.join(_MODES.values())}")
    if any(a.split("=")[0] in _HYDRA_FLAGS_WITHOUT_JOB for a in argv):
        return 0  # Hydra's own informational flags: nothing will run
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    register_schemas()
    try:
        jobs = expand_jobs(overrides) if multirun else [overrides]
    except HydraException as e:
        raise UserError(_one_line(e)) from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        # With Hydra's own config too, so a bad `hydra.` override is one line here, not Hydra's report later. A
        # launcher that sends a sweep's trials elsewhere (Ray) may give them devices this machine lacks.
        local = _check_launcher(jobs[0]) or not multirun if jobs else True
        for job in jobs:
            try:
                cfg = compose(config_name="config", overrides=[o for o in job if not _is_hydra_override(o)])
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                raise UserError(_one_line(e)) from None
            # In a sweep each trial checks its own files, so one missing file fails one trial.
            validate(cfg, check_files=not multirun, check_device=local)
    GlobalHydra.instance().clear()
    return len(jobs)
