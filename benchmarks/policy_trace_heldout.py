"""Which depths `auto` picks at one request on held-out chat, and what it expects of each.

Runs the first N held-out chat prompts one at a time through one engine (the shipped speculator,
speculation auto or on) and prints tok/s, the levels chosen, the median step time per batched token
count, the cost model's buckets, the expected tokens per step per level, and the engine's counters.

    python benchmarks/policy_trace_heldout.py --prompts 16 --speculation auto
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict

import torch

from specserve.engine.llm import LLM
from specserve.sampling_params import SamplingParams
from specserve.train.data import default_prompt_file, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--speculation", default="auto", choices=["auto", "on"])
    parser.add_argument("--depth", type=int, default=None, help="num_speculative_tokens")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, default=1,
                        help="num_candidates (0 = the speculator's own, trees included, as serving does)")
    parser.add_argument("--siblings", type=int, default=None, help="chain_siblings (default: the engine's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(dtype=args.dtype, speculator="default", speculation=args.speculation,
              num_candidates=args.candidates or None, chain_siblings=args.siblings,
              num_speculative_tokens=args.depth, kv_cache_memory="512MiB", enable_prefix_caching=False)
    policy = llm.engine.runner.spec.policy
    chosen: Counter[str] = Counter()
    step_ms: dict[int, list[float]] = defaultdict(list)
    choose, observe_step = policy.choose, policy.observe_step

    def counting_choose(request_ids, num_other_tokens=0):  # type: ignore[no-untyped-def]
        levels = choose(request_ids, num_other_tokens)
        chosen.update(level.label for level in levels)
        return levels

    def timing_observe(num_tokens, seconds, decode_only=True, graphed=False):  # type: ignore[no-untyped-def]
        if decode_only:
            step_ms[num_tokens].append(1e3 * seconds)
        observe_step(num_tokens, seconds, decode_only, graphed)

    policy.choose, policy.observe_step = counting_choose, timing_observe  # type: ignore[method-assign]
    convs = load_prompts(default_prompt_file("heldout"))[:args.prompts]
    params = SamplingParams(max_tokens=128, temperature=0.0)
    started, tokens = time.perf_counter(), 0
    for conv in convs:
        tokens += len(llm.chat([conv], params)[0].outputs[0].token_ids)
    seconds = time.perf_counter() - started
    print(f"{args.speculation}, {len(convs)} prompts one at a time: {tokens / seconds:.1f} tok/s")
    print("levels chosen:", dict(sorted(chosen.items())))
    print("median step ms (steps) by batched tokens:",
          {n: (round(statistics.median(v), 2), len(v)) for n, v in sorted(step_ms.items())})
    print("cost model ms:", {k: round(1e3 * v, 2) for k, v in sorted(policy.cost.buckets.items())})
    print("proposal ms per request:", {lv.label: round(1e3 * v, 2) for lv, v in policy.proposal_seconds.items()})
    print("expected tokens/step:", {lv.label: round(policy.expected(lv, None)[0], 2) for lv in policy.levels})
    stats = llm.stats()
    print({k: stats[k] for k in ("spec_steps", "mean_accepted_tokens_per_step", "spec_acceptance_per_stage",
                                 "spec_accepted_length_histogram")})


if __name__ == "__main__":
    main()
