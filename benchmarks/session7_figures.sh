#!/usr/bin/env bash
# Session 7 figures: chain levels priced from per-position acceptance (spec/acceptance.py) against the
# session-6 policy (per-level averages), in the same session. Throughput at 1, 8 and 32 requests (auto
# against off) and the one-request eval on held-out chat, each run with this checkout's policy and,
# when OLD=path/to/a/checkout/of/6ed050a is set, again with that checkout's code (names *_s6policy).
# Usage: [OLD=/tmp/w/old] bash benchmarks/session7_figures.sh [THREADS] -> benchmarks/results/s7_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
THROUGHPUT="throughput --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator default+ngram"
OLD_SUFFIX=_s6policy
run_both s7_eval_chat_mlp_float32 evaluate --speculator default $CHAT --dtype float32 --num-candidates 1
run_both s7_throughput_float32 bench $THROUGHPUT --dtype float32
run_both s7_throughput_bfloat16 bench $THROUGHPUT --dtype bfloat16
# One request at a time, decode speed: 8 chat prompts twice (4 once in session 6: ~4 s per config was too short
# to compare policies) and the typo prompt, EOS ignored.
LATENCY="latency --configs off,ngram,mlp,auto --num-prompts 8 --repeats 2 --max-tokens 128 --speculator default+ngram"
run_both s7_latency_float32 bench $LATENCY --dtype float32
run_both s7_latency_bfloat16 bench $LATENCY --dtype bfloat16
