#!/usr/bin/env bash
# Session 5 figures: the shipped speculator at 5 stages, alone and behind prompt lookup (default+ngram),
# on held-out chat and on copy-heavy rewrite prompts; the latency and throughput benchmarks.
# Usage: bash benchmarks/session5_figures.sh [THREADS]  -> benchmarks/results/s5_*.json and *.txt
# Set ONLY=name1,name2 to run a subset. Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
OUT=benchmarks/results
mkdir -p "$OUT"
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
evaluate() {  # name, then eval-speculator arguments
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: specserve eval-speculator $* (load: $(load))"
  .venv/bin/specserve eval-speculator "$@" --threads "$T" --json > "$OUT/$name.json"
  .venv/bin/python -c "import json,sys; from specserve.train.eval import print_report; print(print_report(json.load(open(sys.argv[1]))))" "$OUT/$name.json" | tee "$OUT/$name.txt"
}
bench() {  # name, then bench arguments
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: specserve bench $* (load: $(load))"
  .venv/bin/specserve bench "$@" --threads "$T" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}
CHAT="--num-prompts 32 --max-tokens 128 --batch-size 1"
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
