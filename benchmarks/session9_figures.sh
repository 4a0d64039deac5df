#!/usr/bin/env bash
# Session 9 figures on the CPU: the held-out chat eval of the shipped speculator against session 8's
# (SPEC8=path to a copy of session 8's speculator folder), then `auto` against `off` at 1, 8 and 32
# requests and one-request latency with the code and speculator of this checkout.
# Usage: [SPEC8=...] bash benchmarks/session9_figures.sh [THREADS] -> benchmarks/results/s9_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
evaluate s9_eval_chat_mlp_float32 --speculator default $CHAT --dtype float32 --num-candidates 1
if [ -n "${SPEC8:-}" ]; then
  evaluate s9_eval_chat_mlp_float32_s8spec --speculator "$SPEC8" $CHAT --dtype float32 --num-candidates 1
fi
bench s9_throughput_float32 throughput --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 2 --speculator default+ngram --dtype float32
LATENCY="latency --configs off,ngram,mlp,auto --num-prompts 8 --repeats 2 --max-tokens 128 --speculator default+ngram"
bench s9_latency_float32 $LATENCY --dtype float32
bench s9_latency_bfloat16 $LATENCY --dtype bfloat16
# With OLD=path/to/a/checkout/of/250adbd (session 8's code): `auto` against `off` at 8 requests, three
# rounds, with this code and then with that one (name *_s8code).
if [ -n "${OLD:-}" ]; then
  OLD_SUFFIX=_s8code
  run_both s9_throughput_c8_ab bench throughput --concurrency 8 --configs off,auto --max-tokens 128 \
    --num-requests 32 --repeats 3 --speculator default+ngram --dtype float32
fi
