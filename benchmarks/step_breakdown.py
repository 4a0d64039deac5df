"""Where an engine step's time goes: milliseconds per engine step in each component, one request at a
time on held-out chat prompts (stop at EOS), or N at once on the same prompts.

Each component is wrapped in a timer (a few microseconds per call); components nest (the decoder call
is inside the model forward, the kernel chain inside the proposal), so they do not add up. Prefill
steps are included, so their share falls on fewer steps when speculation makes fewer of them; the
decoder call's median by row count (20 calls or more) is printed apart for that reason.

    python benchmarks/step_breakdown.py --speculation off --num-prompts 32
    python benchmarks/step_breakdown.py --speculation auto --num-prompts 32 [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from typing import Any

import torch

import specserve.model.cpu_decoder as cpu_decoder
import specserve.spec.cpu_chain as cpu_chain
import specserve.spec.decoder as spec_decoder
import specserve.spec.head_proposer as head_proposer
import specserve.worker.model_runner as model_runner
from specserve.bench.common import conversation_ids
from specserve.bench.engine_runs import run_concurrent, run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.model.llama import LlamaForCausalLM
from specserve.train.data import default_prompt_file, load_prompts

seconds: collections.Counter[str] = collections.Counter()
calls: collections.Counter[str] = collections.Counter()
decoder_by_rows: dict[int, list[float]] = collections.defaultdict(list)  # the decoder call's seconds by rows


def time_decoder_by_rows() -> None:
    inner = cpu_decoder.CpuDecoder.run

    @functools.wraps(inner)
    def wrapper(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(self, x, *args, **kwargs)
        finally:
            decoder_by_rows[x.shape[0]].append(time.perf_counter() - started)

    cpu_decoder.CpuDecoder.run = wrapper


def timed(owner: Any, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[label] += time.perf_counter() - started
            calls[label] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speculation", default="auto", choices=["off", "auto", "on"])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for owner, name, label in [
            (LLMEngine, "step", "engine step"), (model_runner.ModelRunner, "execute", "runner execute"),
            (LlamaForCausalLM, "forward", "model forward"), (cpu_decoder.CpuDecoder, "run", "  decoder call"),
            (LlamaForCausalLM, "compute_logits", "output head"), (spec_decoder.SpecDecoder, "propose", "proposal"),
            (head_proposer.HeadProposer, "propose", "  speculator"), (cpu_chain.CpuChain, "propose", "    kernel chain"),
            (spec_decoder.SpecDecoder, "verify", "verification"), (spec_decoder.SpecDecoder, "choose", "policy choose"),
            (model_runner, "build_input_batch", "input batch"), (model_runner.ModelRunner, "_move_slots", "KV moves")]:
        timed(owner, name, label)
    time_decoder_by_rows()
    bundle = load_bundle(None, args.dtype, "cpu")
    convs = load_prompts(default_prompt_file("heldout"))[:args.num_prompts]
    prompts = [conversation_ids(bundle.tokenizer, c) for c in convs]
    speculator = None if args.speculation == "off" else "default+ngram"
    engine = LLMEngine(build_engine_config(dtype=args.dtype, device="cpu", kv_cache_memory="1GiB",
                                           max_num_seqs=args.concurrency, speculator=speculator,
                                           speculation=args.speculation), bundle)
    run_single(engine, prompts[0], 8)  # warm-up
    seconds.clear()
    calls.clear()
    decoder_by_rows.clear()
    steps_before, started = engine.num_steps, time.perf_counter()
    if args.concurrency == 1:
        tokens = sum(run_single(engine, p, 128, ignore_eos=False).num_tokens for p in prompts)
    else:
        _, tokens = run_concurrent(engine, prompts, 128)
    wall, steps = time.perf_counter() - started, engine.num_steps - steps_before
    print(f"speculation {args.speculation}, {args.dtype}, {args.concurrency} at once, {len(prompts)} held-out "
          f"prompts: {tokens / wall:.1f} tok/s, {steps} steps, {tokens / steps:.3f} tokens per step, "
          f"{1e3 * wall / steps:.2f} ms per step")
    for label, total in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {label:18s} {1e3 * total / steps:7.3f} ms per step  ({calls[label]} calls)")
    print("the decoder call by rows (a prefill chunk is one call of its length), median ms:")
    for rows, times in sorted(decoder_by_rows.items()):
        if len(times) >= 20:
            times.sort()
            print(f"  {rows:4d} rows: {1e3 * times[len(times) // 2]:6.2f}  ({len(times)} calls)")


if __name__ == "__main__":
    main()
