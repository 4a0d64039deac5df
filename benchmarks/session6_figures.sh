#!/usr/bin/env bash
# Session 6 figures: the adaptive policy's new cost model (machine speed x cost shape) and acceptance
# priors, against the session-5 policy in the same session. Throughput at 1, 8 and 32 requests (auto
# against off) and the one-request eval on held-out chat, each run with this checkout's policy and,
# when OLD=path/to/a/checkout/of/6c2d73b is set, again with that checkout's code (names *_s5policy).
# Usage: [OLD=/tmp/w/old] bash benchmarks/session6_figures.sh [THREADS] -> benchmarks/results/s6_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
THROUGHPUT="throughput --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator default+ngram"
OLD_SUFFIX=_s5policy
run_both s6_throughput_float32 bench $THROUGHPUT --dtype float32
run_both s6_throughput_bfloat16 bench $THROUGHPUT --dtype bfloat16
run_both s6_eval_chat_hybrid_float32 evaluate --speculator default+ngram $CHAT --dtype float32 --num-candidates 1
# Longer runs at 8 and 32 requests (64 requests, 3 interleaved rounds), in both orders of the configs:
# where auto takes no speculative step, what is left between the two is the machine's noise.
LONG="throughput --concurrency 8,32 --max-tokens 128 --num-requests 64 --repeats 3 --speculator default+ngram --dtype float32"
run_both s6_throughput_long_off_first bench $LONG --configs off,auto
run_both s6_throughput_long_auto_first bench $LONG --configs auto,off
# One request at a time, decode speed (4 chat prompts and the typo prompt, EOS ignored).
run_both s6_latency_float32 bench latency --dtype float32 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator default+ngram
run_both s6_latency_bfloat16 bench latency --dtype bfloat16 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator default+ngram
