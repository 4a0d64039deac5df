#!/usr/bin/env bash
# The figures quoted in the issue notes, in one run (2 threads, nothing else running).
# Usage: bash benchmarks/session_figures.sh [THREADS]   -> benchmarks/results/*.json and *.txt
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
OUT=benchmarks/results
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name: specserve $*"; .venv/bin/specserve "$@" --threads "$T" --json "$OUT/$name.json" | tee "$OUT/$name.txt"; }
run compare_float32 bench compare --dtype float32 --max-tokens 128 --concurrency 32 --repeats 3
run compare_bfloat16 bench compare --dtype bfloat16 --max-tokens 128 --concurrency 32 --repeats 3
run latency_bfloat16 bench latency --dtype bfloat16 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128
run throughput_bfloat16 bench throughput --dtype bfloat16 --concurrency 1,8,32 --configs off,auto --max-tokens 64 --num-requests 32
run memory bench memory
