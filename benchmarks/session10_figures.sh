#!/usr/bin/env bash
# Note: benchmarks/siblings_ab.py and benchmarks/runner_up_ab.py were removed in session 13 (the beam of
# spec/chain_beam.py replaced the MLP speculator's siblings and runner-up chain): run this at 95eaf93 or earlier.
# Session 10 figures on the CPU: chain siblings against none on 32 held-out chat prompts (one request at
# a time, forced chain and `auto`), then `auto` against `off` at 1, 8 and 32 requests and one-request
# latency, with this checkout's code (siblings on by default on a CPU).
# Usage: bash benchmarks/session10_figures.sh [THREADS] -> benchmarks/results/s10_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
if want s10_siblings_ab; then
  echo "== s10_siblings_ab: benchmarks/siblings_ab.py (load: $(load))"
  "$PY" benchmarks/siblings_ab.py --num-prompts 32 --chain 0,1,2 --auto 0,1 --threads "$T" \
    | tee "$OUT/s10_siblings_ab.txt"
  echo "load at the end: $(load)" | tee -a "$OUT/s10_siblings_ab.txt"
fi
bench s10_throughput_float32 throughput --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 2 --speculator default+ngram --dtype float32
LATENCY="latency --configs off,ngram,mlp,auto --num-prompts 8 --repeats 2 --max-tokens 128 --speculator default+ngram"
bench s10_latency_float32 $LATENCY --dtype float32
bench s10_latency_bfloat16 $LATENCY --dtype bfloat16
