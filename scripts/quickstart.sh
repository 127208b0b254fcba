#!/usr/bin/env bash
# The main job: set up (first time only), run a small sweep on the Ray launcher, print its report.
#   full data, random, EL2N and k-center at 30% of MNIST-1D's training set, seeds 0 and 1 (8 trials),
#   then `python -m harness.report quickstart` (tables + figures under reports/quickstart/).
# Rerunning resumes: trials that already have a FINISHED run are skipped.
# Usage: scripts/quickstart.sh [extra Hydra overrides for every trial]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"

sweep_rc=0
python -m harness.run -m hydra/launcher=ray \
  strategy=full,random,el2n,kcenter strategy.fraction=0.3 seed=0,1 \
  tracking.experiment=quickstart "$@" || sweep_rc=$?
# The report shows what finished and lists what failed, so it is worth printing either way.
python -m harness.report quickstart
exit "$sweep_rc"
