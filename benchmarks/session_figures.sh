#!/usr/bin/env bash
# The figures quoted in the issue notes, in one run (2 threads, nothing else running).
# Usage: bash benchmarks/session_figures.sh [THREADS]   -> benchmarks/results/*.json and *.txt
# "before" runs the same benchmark on the commit before the CPU kernels (session 1's last commit,
# da14484) from a throwaway git worktree, so before/after are measured in the same session.
# Set ONLY=name1,name2 to run a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
OUT=benchmarks/results
mkdir -p "$OUT"
BEFORE=da14484
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
run() { local name=$1; shift; want "$name" || return 0; echo "== $name: specserve $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"; .venv/bin/specserve "$@" --threads "$T" --json "$OUT/$name.json" | tee "$OUT/$name.txt"; }
run_before() {
  local name=$1; shift
  want "$name" || return 0
  local tree=/tmp/specserve-before-$BEFORE
  [ -d "$tree" ] || git worktree add -f --detach "$tree" "$BEFORE" >/dev/null
  echo "== $name (commit $BEFORE): specserve $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  (cd "$tree" && PYTHONPATH="$tree" SPECSERVE_HOME="${SPECSERVE_HOME:-$HOME/.cache/specserve}" \
    "$OLDPWD/.venv/bin/python" -m specserve.cli "$@" --threads "$T" --json "$OLDPWD/$OUT/$name.json") | tee "$OUT/$name.txt"
}
run compare_float32 bench compare --dtype float32 --max-tokens 128 --concurrency 32 --repeats 2 --speculator default
run compare_bfloat16 bench compare --dtype bfloat16 --max-tokens 128 --concurrency 32 --repeats 2 --speculator default
run_before compare_float32_before bench compare --dtype float32 --max-tokens 128 --concurrency 32 --repeats 1
run_before compare_bfloat16_before bench compare --dtype bfloat16 --max-tokens 128 --concurrency 32 --repeats 1
run latency_bfloat16 bench latency --dtype bfloat16 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128
run throughput_bfloat16 bench throughput --dtype bfloat16 --concurrency 1,8,32 --configs off,auto --max-tokens 64 --num-requests 32
run memory bench memory --dtype bfloat16 --num-requests 32 --max-tokens 128 --kv-cache-memory 256MiB
run memory_default bench memory --dtype bfloat16
if want bench_gemm; then .venv/bin/python -m specserve.kernels.bench_gemm --threads "$T" | tee "$OUT/bench_gemm.txt"; fi
