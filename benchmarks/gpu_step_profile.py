"""Where a speculative step's time goes on CUDA (eager): torch.profiler over one request's decode, with a
single chain and with the speculator's tree, top operators by host time and by device time.

    PYTHONPATH=. python benchmarks/gpu_step_profile.py [--tokens 48] [--dtype bfloat16]
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
    args = parser.parse_args()
    bundle = load_bundle(None, args.dtype, args.device)
    prompt = {"prompt_token_ids": chat_prompt_ids(bundle.tokenizer, 0)}
    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    for name, candidates in (("chain", 1), ("tree", None)):
        llm = LLM(bundle=bundle, device=args.device, speculator="default", speculation="on", num_candidates=candidates)
        llm.generate(prompt, params)  # warm-up: Triton compiles
        sync()
        before = llm.stats().get("spec_steps", 0)
        started = time.perf_counter()
        with profile(activities=activities) as prof:
            llm.generate(prompt, params)
            sync()
        seconds = time.perf_counter() - started
        steps = llm.stats().get("spec_steps", 0) - before
        print(f"== {name}: {steps} steps, {1e3 * seconds / max(steps, 1):.2f} ms per step under the profiler")
        table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60)
        print(table)
        if cuda:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
