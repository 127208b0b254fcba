#!/usr/bin/env bash
# The probe_budget experiment end to end (resumable): the grid of target-model probes, the baselines, the proxies,
# then the report. Extra arguments go to every sweep (e.g. tracking.uri=...). See README.md here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run() { python -m harness.run -m +experiment=probe_budget "$@"; }
run "$@"                                                                    # 2 x 4 x 3 probes x 5 seeds
run strategy=full,random probe.epochs=20 probe.runs=1 "$@"                  # no probe: the baselines
run probe.epochs=20 probe.runs=1 'probe.model={_target_:harness.models.Logistic}' "$@"       # SVP proxies
run probe.epochs=20 probe.runs=1 'probe.model={_target_:harness.models.CNN1D,channels:8}' "$@"
run probe.epochs=20 probe.runs=1 probe.subset=0.25 "$@"                    # the probe on a quarter of the data
python -m harness.report probe_budget --reuse 10 --out experiments/probe_budget/report
