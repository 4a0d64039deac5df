#!/usr/bin/env bash
# Run every benchmark with the fixed settings of docs/benchmarks.md and rewrite that file.
# Usage: benchmarks/run_all.sh [--quick] [--only latency,serve] [--threads N] [--render-only]
# Run it on a quiet machine: each benchmark prints the load average at its start and end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" -m specserve.bench.report "$@"
