"""What the adaptive policy's exploration costs at a given batch size: `off`, `auto`, and `auto` with
exploration turned off (explore_every set past the run), taking turns round by round.

    python benchmarks/explore_cost.py --concurrency 8 --rounds 4

32 chat prompts made distinct (as `bench throughput`), 128 greedy tokens each, EOS ignored, float32,
`--speculator default+ngram`. Prints each engine's tokens/s per round, the median of its per-round
ratios to `off`, and how many request-steps drafted.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from specserve.bench.common import chat_prompt_ids
from specserve.bench.engine_runs import run_concurrent
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, "float32", "cpu")
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(32)]

    def engine(speculation: str, explore_every: int | None = None) -> LLMEngine:
        speculator = None if speculation == "off" else "default+ngram"
        built = LLMEngine(build_engine_config(dtype="float32", device="cpu", kv_cache_memory="1GiB",
                                              max_num_seqs=args.concurrency, max_num_batched_tokens=1024,
                                              speculator=speculator, speculation=speculation), bundle)
        if explore_every is not None:
            built.runner.spec.policy.explore_every = explore_every
        run_concurrent(built, prompts[:args.concurrency], 8)  # warm-up, first step costs
        return built

    engines = {"off": engine("off"), "auto": engine("auto"), "auto, no exploration": engine("auto", 10**9)}
    tok_s: dict[str, list[float]] = {name: [] for name in engines}
    drafted = dict.fromkeys(engines, 0)
    for _ in range(args.rounds):
        for name, eng in engines.items():
            eng.kv.reset_prefix_cache()
            before = eng.stats().get("spec_steps", 0)
            seconds, tokens = run_concurrent(eng, prompts, 128)
            tok_s[name].append(tokens / seconds)
            drafted[name] += eng.stats().get("spec_steps", 0) - before
    print(f"{args.concurrency} requests at once, {args.rounds} rounds, float32, {args.threads} threads")
    for name in engines:
        ratio = statistics.median(a / b for a, b in zip(tok_s[name], tok_s["off"]))
        print(f"{name:22s} tok/s {[round(x, 1) for x in tok_s[name]]}  median x_off {ratio:.3f}  "
              f"drafting request-steps {drafted[name]}")


if __name__ == "__main__":
    main()
