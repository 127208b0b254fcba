#!/usr/bin/env bash
# The tests: set up with the dev extra (first time only), lint, then run pytest.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
WINNOW_EXTRAS=dev source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
ruff check .
python -m pytest -q "$@"
