#!/usr/bin/env bash
# The corrupted_data experiment end to end (resumable), then its report. Extra arguments go to every sweep.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run() { python -m harness.run -m +experiment=corrupted_data "$@"; }
# (++ below: Hydra composes a sweep's base config with the default strategy, which has no `embedding` key)
run "$@"                                                                     # full, random and the coresets at 0.8
run strategy=exact_dedup strategy.fraction=1.0 "$@"                          # removes exact copies only
run strategy=semdedup,knn_dedup ++strategy.embedding=raw "$@"                # near-copies in input space, to 0.8
run strategy=pipeline 'strategy.pipeline=[exact_dedup,{name:knn_dedup,embedding:raw,eps:0.03},el2n]' "$@"
python -m harness.report corrupted_data --out experiments/corrupted_data/report
