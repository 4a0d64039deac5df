# Helpers shared by the benchmarks/session*_figures.sh scripts (sourced, not run, first thing):
# strict mode, the repository root as working folder, T = the script's first argument (threads,
# default 2), OUT = benchmarks/results, CHAT = the held-out chat eval's arguments.
# ONLY=name1,name2 restricts a run to those names.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-2}
OUT=benchmarks/results
mkdir -p "$OUT"
CHAT="--num-prompts 32 --max-tokens 128 --batch-size 1"
# PY: the Python that runs specserve (default .venv/bin/python; the code is imported from the current
# folder first, so another checkout's code runs from its folder with this venv).
PY=${PY:-$(pwd)/.venv/bin/python}
want() { [ -z "${ONLY:-}" ] || [[ ",$ONLY," == *",$1,"* ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
evaluate() {  # name, then eval-speculator arguments
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: specserve eval-speculator $* (load: $(load))"
  "$PY" -m specserve.cli eval-speculator "$@" --threads "$T" --json > "$OUT/$name.json"
  "$PY" -c "import json,sys; from specserve.train.eval import print_report; print(print_report(json.load(open(sys.argv[1]))))" "$OUT/$name.json" | tee "$OUT/$name.txt"
}
bench() {  # name, then bench arguments
  local name=$1; shift
  want "$name" || return 0
  echo "== $name: specserve bench $* (load: $(load))"
  "$PY" -m specserve.cli bench "$@" --threads "$T" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}
# run_both NAME FN ARGS...: FN (evaluate or bench) with this checkout's code, then, when OLD is set to
# another checkout, the same command with that checkout's code (imported from its folder), under the
# name NAME$OLD_SUFFIX.
OUT_ABS=$(pwd)/$OUT
run_both() {
  local name=$1 fn=$2; shift 2
  "$fn" "$name" "$@"
  if [ -n "${OLD:-}" ]; then
    (cd "$OLD" && OUT="$OUT_ABS" PYTHONPATH="$OLD" "$fn" "${name}${OLD_SUFFIX}" "$@")
  fi
}
