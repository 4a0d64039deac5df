"""Chain siblings against none, one request at a time, on held-out chat prompts (the shipped speculator).

Engines share the loaded weights and take turns prompt by prompt, so their tok/s are measured side by
side on a noisy machine: plain decoding, a forced single chain (speculation "on", 1 candidate) with
0-4 siblings, and `auto` with several sibling counts. Greedy; every output must equal the plain one.

    python benchmarks/siblings_ab.py --num-prompts 16 [--dtype bfloat16] [--chain 0,1,2,3,4] [--auto 0,1,2]
"""

from __future__ import annotations

import argparse
import time

import torch

from specserve.engine.llm import LLM
from specserve.engine.model_setup import load_bundle
from specserve.sampling_params import SamplingParams
from specserve.train.data import default_prompt_file, load_prompts


def counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chain", type=counts, default=[0, 1, 2, 3, 4], help="sibling counts, forced chain")
    parser.add_argument("--auto", type=counts, default=[0, 1, 2], help="sibling counts under auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    convs = load_prompts(default_prompt_file("heldout"))[:args.num_prompts]
    bundle = load_bundle(None, args.dtype, "cpu")
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    common = dict(bundle=bundle, dtype=args.dtype, kv_cache_memory="512MiB", max_num_seqs=1,
                  enable_prefix_caching=False)
    engines = {"plain": LLM(**common)}
    for n in args.chain:
        engines[f"chain, {n} siblings"] = LLM(**common, speculator="default", speculation="on", num_candidates=1,
                                              chain_siblings=n)
    for n in args.auto:
        engines[f"auto, {n} siblings"] = LLM(**common, speculator="default", speculation="auto", chain_siblings=n)
    elapsed = dict.fromkeys(engines, 0.0)
    outputs: dict[str, list[list[int]]] = {name: [] for name in engines}
    for conv in convs:
        for name, llm in engines.items():
            started = time.perf_counter()
            out = llm.chat([conv], params)
            elapsed[name] += time.perf_counter() - started
            outputs[name].append(list(out[0].outputs[0].token_ids))
    num_tokens = sum(map(len, outputs["plain"]))
    print(f"{len(convs)} held-out chat prompts, {args.dtype}, {args.threads} threads, {num_tokens} tokens")
    for name, llm in engines.items():
        stats = llm.stats()
        line = f"{name:20s} {num_tokens / elapsed[name]:6.1f} tok/s  {elapsed['plain'] / elapsed[name]:.3f}x"
        if name != "plain":
            policy = llm.engine.runner.spec.policy
            line += (f"  {stats['mean_accepted_tokens_per_step']:.3f} tokens/step, rescued by a sibling in "
                     f"{policy.sibling_rescue:.3f} of chain steps (EMA), speculator "
                     f"{stats['spec_proposal_ms_per_step']:.2f} ms/step, identical: {outputs[name] == outputs['plain']}")
        print(line)


if __name__ == "__main__":
    main()
