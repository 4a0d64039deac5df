#!/usr/bin/env bash
# Session 4 figures: the retrained speculators on held-out prompts, and the speculation benchmarks.
# Usage: bash benchmarks/session4_figures.sh [THREADS]  -> benchmarks/results/*.json and *.txt
# MLP and MEDUSA name the speculators to compare (defaults: the shipped MLP, runs/medusa-full/medusa).
# Set ONLY=name1,name2 to run a subset.
source "$(dirname "$0")/figures_common.sh"
MLP=${MLP:-default}
MEDUSA=${MEDUSA:-medusa:runs/medusa-full/medusa}
if want speculator_cost; then echo "== speculator_cost (load: $(load))"; .venv/bin/python benchmarks/speculator_cost.py --threads "$T" --iters 200 | tee "$OUT/speculator_cost.txt"; fi
if want head_vocab; then echo "== head_vocab (load: $(load))"; .venv/bin/python benchmarks/head_vocab_tradeoff.py "${RUN:-runs/mlp-full}" --threads "$T" | tee "$OUT/head_vocab_tradeoff.txt"; fi
EVAL="--num-prompts 32 --max-tokens 128 --batch-size 1"
evaluate eval_mlp_float32 --speculator "$MLP" $EVAL
evaluate eval_medusa_float32 --speculator "$MEDUSA" $EVAL
evaluate eval_ngram_float32 --speculator ngram $EVAL
evaluate eval_mlp_bfloat16 --speculator "$MLP" $EVAL --dtype bfloat16
bench latency_float32 latency --dtype float32 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator "$MLP"
bench latency_bfloat16 latency --dtype bfloat16 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator "$MLP"
bench throughput_float32 throughput --dtype float32 --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator "$MLP"
bench throughput_bfloat16 throughput --dtype bfloat16 --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator "$MLP"
