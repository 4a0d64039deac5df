#!/usr/bin/env bash
# Session 5 figures: the shipped speculator at 5 stages, alone and behind prompt lookup (default+ngram),
# on held-out chat and on copy-heavy rewrite prompts; the latency and throughput benchmarks.
# Usage: bash benchmarks/session5_figures.sh [THREADS]  -> benchmarks/results/s5_*.json and *.txt
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
source "$(dirname "$0")/figures_common.sh"
REWRITE="--prompts benchmarks/prompts_rewrite.jsonl --max-tokens 128 --batch-size 1"
evaluate s5_eval_chat_hybrid_bfloat16 --speculator default+ngram $CHAT --dtype bfloat16
evaluate s5_eval_chat_mlp_bfloat16 --speculator default $CHAT --dtype bfloat16 --num-candidates 1
evaluate s5_eval_rewrite_hybrid_bfloat16 --speculator default+ngram $REWRITE --dtype bfloat16 --num-candidates 1
evaluate s5_eval_rewrite_mlp_bfloat16 --speculator default $REWRITE --dtype bfloat16 --num-candidates 1
evaluate s5_eval_rewrite_ngram_bfloat16 --speculator ngram $REWRITE --dtype bfloat16 --num-candidates 1
evaluate s5_eval_chat_hybrid_float32 --speculator default+ngram $CHAT --dtype float32 --num-candidates 1
evaluate s5_eval_rewrite_hybrid_float32 --speculator default+ngram $REWRITE --dtype float32 --num-candidates 1
bench s5_latency_bfloat16 latency --dtype bfloat16 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator default+ngram
bench s5_latency_float32 latency --dtype float32 --configs off,ngram,mlp,auto --num-prompts 4 --max-tokens 128 --speculator default+ngram
bench s5_throughput_bfloat16 throughput --dtype bfloat16 --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator default+ngram
bench s5_throughput_float32 throughput --dtype float32 --concurrency 1,8,32 --configs off,auto --max-tokens 128 --num-requests 32 --repeats 2 --speculator default+ngram
