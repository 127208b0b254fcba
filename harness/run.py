"""Entry point: `python -m harness.run [overrides]` (console script `winnow-run`).

One trial by default; `-m` with comma-separated values runs a sweep (Hydra multirun).
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import register_schemas
from harness.errors import UserError, exit_user_error

register_schemas()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    from harness.trial import run_trial  # heavy imports (torch, mlflow) after the config is known good

    try:
        result = run_trial(cfg)
    except UserError as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # one trial of a sweep: the launcher records it and the others go on
        exit_user_error("winnow", e)
    print(f"test_accuracy={result.test_accuracy:.4f} n_selected={result.n_selected} "
          f"train_s={result.metrics['train_s']:.1f} total_s={result.metrics['total_s']:.1f} run_id={result.run_id}")
    return result.test_accuracy


def main() -> None:
    from harness.preflight import preflight

    try:
        preflight(sys.argv[1:])
    except UserError as e:
        exit_user_error("winnow", e)
    try:
        hydra_main()
    except KeyboardInterrupt:
        print("winnow: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
