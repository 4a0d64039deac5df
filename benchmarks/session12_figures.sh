#!/usr/bin/env bash
# Session 12 figures on the CPU: one request at a time on the speculator's 32 held-out chat prompts
# (decode tokens/s, `auto` against `off`, setups taking turns forwards then backwards), `auto` against
# `off` and a second plain engine (`control`, the noise floor) at 8 and 32 requests, and a fresh engine
# meeting 8 or 32
# requests at once (benchmarks/step_breakdown.py warms up on one request only), this checkout against
# OLD=<a checkout before this session's policy changes> when set.
# Usage: bash benchmarks/session12_figures.sh [THREADS] -> benchmarks/results/s12_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
HELDOUT="latency --configs off,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl --num-prompts 32
  --stop-at-eos --max-tokens 128 --speculator default+ngram"
bench s12_latency_heldout_float32 $HELDOUT --dtype float32
bench s12_latency_heldout_bfloat16 $HELDOUT --dtype bfloat16
# s12_min_path_prob_ab*.txt and s12_throughput_c8_c32_pruning.* ran at 52e2d16 (the least path
# probability, reverted): `python benchmarks/min_path_prob_ab.py --num-prompts 32 --offset 0|64` there,
# and the throughput command below.
bench s12_throughput_c8_c32_final throughput --concurrency 8,32 --configs off,auto,control --max-tokens 128 \
  --num-requests 32 --repeats 6 --speculator default+ngram --dtype float32
if want s12_cold_start; then
  echo "== s12_cold_start: python benchmarks/step_breakdown.py --concurrency 8|32 (load: $(load))"
  for round in 1 2; do
    for concurrency in 8 32; do
      for speculation in off auto; do
        echo "this checkout: $("$PY" benchmarks/step_breakdown.py --speculation $speculation --num-prompts 32 \
          --concurrency $concurrency --threads "$T" | head -1)"
        if [ -n "${OLD:-}" ] && [ $speculation = auto ]; then
          echo "OLD ($(git -C "$OLD" rev-parse --short HEAD)): $(cd "$OLD" && PYTHONPATH="$OLD" "$PY" \
            benchmarks/step_breakdown.py --speculation auto --num-prompts 32 --concurrency $concurrency \
            --threads "$T" | head -1)"
        fi
      done
    done
  done | tee "$OUT/s12_cold_start.txt"
fi
# Every held-out prompt (243), the final engine.
bench s12_latency_heldout_all_float32 latency --configs off,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl \
  --num-prompts 0 --stop-at-eos --max-tokens 128 --speculator default+ngram --dtype float32
