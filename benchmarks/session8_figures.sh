#!/usr/bin/env bash
# Session 8 figures on the CPU: `auto` (now with the outcome check and the plain step re-timed) against
# `off` at 1, 8 and 32 requests, one-request latency, and the held-out chat eval. With OLD=path/to/a/
# checkout/of/c904708 each runs again with the session-7 code (names *_s7policy).
# Usage: [OLD=...] bash benchmarks/session8_figures.sh [THREADS] -> benchmarks/results/s8_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
THROUGHPUT="throughput --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator default+ngram"
OLD_SUFFIX=_s7policy
run_both s8_throughput_float32 bench $THROUGHPUT --dtype float32
run_both s8_throughput_bfloat16 bench $THROUGHPUT --dtype bfloat16
LATENCY="latency --configs off,ngram,mlp,auto --num-prompts 8 --repeats 2 --max-tokens 128 --speculator default+ngram"
run_both s8_latency_float32 bench $LATENCY --dtype float32
run_both s8_latency_bfloat16 bench $LATENCY --dtype bfloat16
run_both s8_eval_chat_mlp_float32 evaluate --speculator default $CHAT --dtype float32 --num-candidates 1
