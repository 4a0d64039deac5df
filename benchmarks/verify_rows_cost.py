"""What a verification step costs by the number of rows it verifies, at one request (the default model).

Each engine but the first drafts k tokens every step that are never right (so every step verifies
k + 1 rows and emits one token); the engines take turns, three rounds, and the best round of each is
printed as milliseconds per step (a 48-token generation after a short prompt).

    python benchmarks/verify_rows_cost.py --drafts 0,5,7,8,9,11,15 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import time

import torch

from specserve import LLM, SamplingParams
from specserve.engine.model_setup import load_bundle
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import ProposalRequest


class WrongChain:
    """A chain of k tokens no greedy continuation of the prompt below takes."""

    name = "wrong-chain"
    needs_hidden = False

    def __init__(self, k: int) -> None:
        self.k = k

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        return [DraftTree.chain([100 + j for j in range(min(self.k, r.max_depth))]) for r in requests]

    def release(self, request_id: str) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafts", default="0,5,7,8,9,11,15", help="draft tokens per step, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, args.dtype, "cpu")
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    engines: dict[int, LLM] = {}
    for k in (int(x) for x in args.drafts.split(",")):
        llm = LLM(bundle=bundle, dtype=args.dtype, kv_cache_memory="256MiB", max_num_seqs=1)
        if k:
            llm.engine.runner.attach_speculator(SpecDecoder(WrongChain(k), SpeculationPolicy("on", k, 1)), k, 1)
        engines[k] = llm
    times: dict[int, list[float]] = {k: [] for k in engines}
    for _ in range(3):
        for k, llm in engines.items():
            started = time.perf_counter()
            out = llm.generate("Tell me a story about a cat.", params)[0]
            assert len(out.outputs[0].token_ids) == args.tokens
            times[k].append(1e3 * (time.perf_counter() - started) / args.tokens)
    print(f"{args.dtype}, {args.threads} threads, one request, ms per step (best of 3 rounds; all rounds)")
    for k, values in times.items():
        print(f"{k + 1:3d} rows: {min(values):6.2f}   {[round(v, 1) for v in values]}")


if __name__ == "__main__":
    main()
