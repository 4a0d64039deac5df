"""Which speculation levels `auto` picks for N requests run one at a time, and what it has measured.

Runs the throughput benchmark's chat prompts through one engine (``--speculator``, speculation auto,
one request at a time) and prints tok/s, how often each level (depth d, candidates c) was chosen, the
step-time buckets of the cost model, the emitted tokens per step it expects at each level and the
proposal cost per level.

    python benchmarks/policy_levels.py --dtype float32 --requests 32
"""

from __future__ import annotations

import time
from collections import Counter

from auto_engine import auto_engine, parse_args  # benchmarks/, beside this script

from specserve.bench.engine_runs import run_concurrent


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], "float32")
    engine, prompts = auto_engine(args, max_num_seqs=1)
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
    print("expected tokens/step:", {lv.label: round(policy.expected(lv, None)[0], 2) for lv in policy.levels})
    print("proposal ms:", {lv.label: round(1e3 * v, 2) for lv, v in policy.proposal_seconds.items()})


if __name__ == "__main__":
    main()
