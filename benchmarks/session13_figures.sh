#!/usr/bin/env bash
# Session 13 figures on the CPU: the beam beside the MLP speculator's chain (spec/chain_beam.py). Offline
# tree shapes on 40 held-out prompts; the beam at 0 (the chain alone), 4 and 6 nodes beside the chain
# against `off` (one request, engines taking turns); one request on the 32 and on all 243 held-out chat
# prompts (`auto` against `off`, decode tokens/s); `auto` against `off` and a second plain engine
# (`control`) at 8 and 32 requests; where a step's time goes at one request.
# Usage: bash benchmarks/session13_figures.sh [THREADS] -> benchmarks/results/s13_*
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
if want s13_tree_shapes_sim; then
  "$PY" benchmarks/tree_shapes_sim.py --offset 0 --num-prompts 40 --threads "$T" | tee "$OUT/s13_tree_shapes_sim.txt"
fi
if want s13_beam_ab; then
  echo "== s13_beam_ab: benchmarks/beam_ab.py (load: $(load))"
  "$PY" benchmarks/beam_ab.py --num-prompts 32 --offset 136 --extras 0,4,6 --threads "$T" | tee "$OUT/s13_beam_ab.txt"
  echo "load at the end: $(load)" | tee -a "$OUT/s13_beam_ab.txt"
fi
HELDOUT="latency --configs off,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl --stop-at-eos
  --max-tokens 128 --speculator default+ngram"
bench s13_latency_heldout_float32 $HELDOUT --num-prompts 32 --dtype float32
bench s13_latency_heldout_bfloat16 $HELDOUT --num-prompts 32 --dtype bfloat16
# Prompt lookup alone against off and the shipped setup, chat and the rewrite prompts, one run.
bench s13_latency_ngram_rewrite latency --configs off,ngram-auto,auto --chat-prompts specserve/train/data/prompts_heldout.jsonl \
  --num-prompts 32 --rewrite-prompts benchmarks/prompts_rewrite.jsonl --stop-at-eos --max-tokens 128 \
  --speculator default+ngram --dtype float32
bench s13_latency_heldout_all_float32 $HELDOUT --num-prompts 0 --dtype float32
bench s13_latency_heldout_all_float32_run2 $HELDOUT --num-prompts 0 --dtype float32  # the same, again
bench s13_throughput_c8_c32 throughput --concurrency 8,32 --configs off,auto,control --max-tokens 128 \
  --num-requests 32 --repeats 6 --speculator default+ngram --dtype float32
bench s13_throughput_c4_c16 throughput --concurrency 4,16 --configs off,auto,control --max-tokens 128 \
  --num-requests 32 --repeats 4 --speculator default+ngram --dtype float32
# Twelve rounds, for paired statistics of the per-round ratios (extra.x_off_rounds in the JSON).
bench s13_throughput_c8_c32_12rounds throughput --concurrency 8,32 --configs off,auto,control --max-tokens 128 \
  --num-requests 32 --repeats 12 --speculator default+ngram --dtype float32
if want s13_throughput_c8_c32_12rounds; then
  "$PY" benchmarks/paired_rounds.py "$OUT/s13_throughput_c8_c32_12rounds.json" | tee "$OUT/s13_throughput_c8_c32_12rounds_paired.txt"
fi
if want s13_step_breakdown; then
  echo "== s13_step_breakdown: benchmarks/step_breakdown.py --speculation off,auto (load: $(load))"
  "$PY" benchmarks/step_breakdown.py --speculation off,auto --num-prompts 32 --threads "$T" \
    | tee "$OUT/s13_step_breakdown.txt"
  echo "load at the end: $(load)" | tee -a "$OUT/s13_step_breakdown.txt"
fi
