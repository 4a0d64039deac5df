"""Which speculation levels `auto` picks for N requests run one at a time, and what it has measured.

Runs the throughput benchmark's chat prompts through one engine (``--speculator``, speculation auto,
one request at a time) and prints tok/s, how often each level (depth d, candidates c) was chosen, the
step-time buckets of the cost model, the emitted tokens per step it expects at each level and the
proposal cost per level.

    python benchmarks/policy_levels.py --dtype float32 --requests 32
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch

from specserve.bench.common import chat_prompt_ids
from specserve.bench.engine_runs import run_concurrent
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--speculator", default="default+ngram")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, args.dtype, "cpu")
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(args.requests)]
    engine = LLMEngine(build_engine_config(dtype=args.dtype, max_num_seqs=1, speculator=args.speculator,
                                           speculation="auto"), bundle)
    spec = engine.runner.spec
    chosen: Counter[str] = Counter()
    choose = spec.choose

    def counting_choose(request_ids: list[str], num_other_tokens: int):  # type: ignore[no-untyped-def]
        levels = choose(request_ids, num_other_tokens)
        chosen.update(level.label for level in levels)
        return levels

    spec.choose = counting_choose  # type: ignore[method-assign]
    run_concurrent(engine, prompts[:1], 8)  # the throughput benchmark's warm-up
    started = time.perf_counter()
    _, tokens = run_concurrent(engine, prompts, args.max_tokens)
    seconds = time.perf_counter() - started
    policy = spec.policy
    print(f"{args.dtype}, {args.requests} requests one at a time: {tokens / seconds:.1f} tok/s")
    print("levels chosen:", dict(chosen.most_common()))
    print("step ms by batched tokens (bucket):", {k: round(1e3 * v, 2) for k, v in sorted(policy.cost.buckets.items())})
    print("expected tokens/step:", {lv.label: round(v, 2) for lv, v in policy.global_stats.emitted.items()})
    print("proposal ms:", {lv.label: round(1e3 * v, 2) for lv, v in policy.proposal_seconds.items()})


if __name__ == "__main__":
    main()
