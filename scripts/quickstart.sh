#!/usr/bin/env bash
# The main job: set up (first time only), then run Winnow's default experiment and print its result.
# Usage: scripts/quickstart.sh [extra Hydra overrides]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
python -m harness.run "$@"
