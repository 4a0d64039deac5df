#!/usr/bin/env bash
# Note: benchmarks/siblings_ab.py and benchmarks/runner_up_ab.py were removed in session 13 (the beam of
# spec/chain_beam.py replaced the MLP speculator's siblings and runner-up chain): run this at 95eaf93 or earlier.
# Session 11 figures on the CPU: one request at a time on the speculator's 32 held-out chat prompts
# (decode tokens/s, `auto` against `off`, setups taking turns request by request; with OLD=<checkout>
# also that checkout's engine under this checkout's benchmark files), the built-in chat and rewrite
# prompts, and `auto` against `off` at 1, 8 and 32 requests with per-round paired ratios.
# Usage: bash benchmarks/session11_figures.sh [THREADS] -> benchmarks/results/s11_*
# The session-10 runs (*_old): OLD=<a worktree of 11af161 with this checkout's
# specserve/bench/{latency,engine_runs}.py copied in> (its own latency benchmark has no --chat-prompts).
# The attention kernel alone, this checkout against OLD: s11_attention_rows_cost.txt, from
# `python benchmarks/attention_rows_cost.py` run in each (PYTHONPATH=<that checkout>).
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
OLD_SUFFIX=${OLD_SUFFIX:-_old}
HELDOUT="latency --configs off,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl --num-prompts 32
  --stop-at-eos --max-tokens 128 --speculator default+ngram"
run_both s11_latency_heldout_float32 bench $HELDOUT --dtype float32
bench s11_latency_heldout_bfloat16 $HELDOUT --dtype bfloat16
bench s11_latency_float32 latency --configs off,ngram,mlp,auto --num-prompts 8 --repeats 2 --max-tokens 128 \
  --speculator default+ngram --dtype float32
bench s11_throughput_c1 throughput --concurrency 1 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 2 --speculator default+ngram --dtype float32
bench s11_throughput_c8_c32 throughput --concurrency 8,32 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 5 --speculator default+ngram --dtype float32
# Run again (3 rounds) after the first c1 run's two rounds gave 1.41x and 1.85x.
bench s11_throughput_c1_round2 throughput --concurrency 1 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 3 --speculator default+ngram --dtype float32
# The same at one request with this engine and, with OLD set, session 10's (2 rounds each).
run_both s11_throughput_c1_ab bench throughput --concurrency 1 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 2 --speculator default+ngram --dtype float32
# After the runner-up chain (the position-1 sibling's continuation): its A/B, and the held-out figures again.
if want s11_runner_up_ab; then
  "$PY" benchmarks/runner_up_ab.py --num-prompts 64 --offset 0 --lengths 0,2 --threads "$T" | tee "$OUT/s11_runner_up_ab.txt"
fi
bench s11_latency_heldout_float32_final $HELDOUT --dtype float32
bench s11_latency_heldout_bfloat16_final $HELDOUT --dtype bfloat16
bench s11_throughput_c8_c32_final throughput --concurrency 8,32 --configs off,auto --max-tokens 128 --num-requests 32 \
  --repeats 5 --speculator default+ngram --dtype float32
# Every held-out prompt (243), the final engine.
bench s11_latency_heldout_all_float32 latency --configs off,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl \
  --num-prompts 0 --stop-at-eos --max-tokens 128 --speculator default+ngram --dtype float32
