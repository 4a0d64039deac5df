"""Where a speculative step's time goes on CUDA (eager): torch.profiler over the decode of --requests
requests at once, plain, with a single chain, with the speculator's tree and with `auto`; top operators
by host time and by device time.

    PYTHONPATH=. python benchmarks/gpu_step_profile.py [--tokens 48] [--requests 8] [--dtype bfloat16]

On an H200 (session 8), `auto` ran 8 requests at 0.41x of plain decode, eagerly: this is the run
that should say why.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from specserve import LLM, SamplingParams
from specserve.bench.common import chat_prompt_ids
from specserve.engine.model_setup import load_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--rows", type=int, default=22)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--requests", type=int, default=1)
    parser.add_argument("--speculator", default="default+ngram")
    args = parser.parse_args()
    bundle = load_bundle(None, args.dtype, args.device)
    prompts = [{"prompt_token_ids": chat_prompt_ids(bundle.tokenizer, i, distinct=True)} for i in range(args.requests)]
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    setups = {"plain": {}, "chain": dict(speculation="on", num_candidates=1), "tree": dict(speculation="on"),
              "auto": dict(speculation="auto")}
    for name, extra in setups.items():
        spec = {"speculator": args.speculator, **extra} if extra else {}
        llm = LLM(bundle=bundle, dtype=args.dtype, device=args.device, max_num_seqs=args.requests, **spec)
        llm.generate(prompts, params)  # warm-up: Triton compiles
        sync()
        before = llm.engine.num_steps
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            llm.generate(prompts, params)
            sync()
        seconds = time.perf_counter() - started
        steps = llm.engine.num_steps - before
        print(f"== {name}: {steps} engine steps, {1e3 * seconds / max(steps, 1):.2f} ms each under the profiler, "
              f"{args.requests * args.tokens / seconds:.0f} tok/s")
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60)
        print(table)
        if cuda:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
