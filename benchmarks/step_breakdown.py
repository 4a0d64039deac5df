"""Where an engine step's time goes: milliseconds per engine step in each component, one request at a
time on held-out chat prompts (stop at EOS), or N at once on the same prompts.

Each component is wrapped in a timer (a few microseconds per call); components nest (the decoder call
is inside the model forward, the kernel chain inside the proposal), so they do not add up. Prefill
steps are included, so their share falls on fewer steps when speculation makes fewer of them; the
decoder call's median by row count (20 calls or more) is printed apart for that reason.

    python benchmarks/step_breakdown.py --speculation off --num-prompts 32
    python benchmarks/step_breakdown.py --speculation auto --num-prompts 32 [--dtype bfloat16]
    python benchmarks/step_breakdown.py --speculation off,auto --num-prompts 32   # one request at a time:
        # the engines take turns prompt by prompt (A B, B A, ...), so both see the same spells of load
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

# Per engine (the setup being run), as the engines may take turns in one process.
current = ["off"]
seconds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
calls: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
# the decoder call's seconds by rows
decoder_by_rows: dict[str, dict[int, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))


def time_decoder_by_rows() -> None:
    inner = cpu_decoder.CpuDecoder.run

    @functools.wraps(inner)
    def wrapper(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(self, x, *args, **kwargs)
        finally:
            decoder_by_rows[current[0]][x.shape[0]].append(time.perf_counter() - started)

    cpu_decoder.CpuDecoder.run = wrapper


def timed(owner: Any, name: str, label: str) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[current[0]][label] += time.perf_counter() - started
            calls[current[0]][label] += 1

    setattr(owner, name, wrapper)


def report(setup: str, dtype: str, concurrency: int, num_prompts: int, tokens: int, wall: float,
           steps: int) -> None:
    print(f"speculation {setup}, {dtype}, {concurrency} at once, {num_prompts} held-out "
          f"prompts: {tokens / wall:.1f} tok/s, {steps} steps, {tokens / steps:.3f} tokens per step, "
          f"{1e3 * wall / steps:.2f} ms per step")
    for label, total in sorted(seconds[setup].items(), key=lambda item: -item[1]):
        print(f"  {label:18s} {1e3 * total / steps:7.3f} ms per step  ({calls[setup][label]} calls)")
    print("the decoder call by rows (a prefill chunk is one call of its length), ms: median (10th-90th percentile)")
    for rows, times in sorted(decoder_by_rows[setup].items()):
        if len(times) >= 20:
            times.sort()
            n = len(times)
            print(f"  {rows:4d} rows: {1e3 * times[n // 2]:6.2f}  ({1e3 * times[n // 10]:.2f}-{1e3 * times[9 * n // 10]:.2f}, "
                  f"{n} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speculation", default="auto",
                        help="off, auto or on; several (off,auto) take turns prompt by prompt, one request at a time")
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
            (cpu_chain.CpuChain, "propose_beam", "    kernel beam"),
            (spec_decoder.SpecDecoder, "verify", "verification"), (spec_decoder.SpecDecoder, "choose", "policy choose"),
            (model_runner, "build_input_batch", "input batch"), (model_runner.ModelRunner, "_move_slots", "KV moves")]:
        timed(owner, name, label)
    time_decoder_by_rows()
    bundle = load_bundle(None, args.dtype, "cpu")
    convs = load_prompts(default_prompt_file("heldout"))[:args.num_prompts]
    prompts = [conversation_ids(bundle.tokenizer, c) for c in convs]
    setups = args.speculation.split(",")
    if any(s not in ("off", "auto", "on") for s in setups) or (len(setups) > 1 and args.concurrency != 1):
        parser.error("--speculation takes off, auto or on; several only with --concurrency 1")
    engines = {}
    for setup in setups:
        engines[setup] = LLMEngine(build_engine_config(
            dtype=args.dtype, device="cpu", kv_cache_memory="1GiB", max_num_seqs=args.concurrency,
            speculator=None if setup == "off" else "default+ngram", speculation=setup), bundle)
        current[0] = setup
        run_single(engines[setup], prompts[0], 8)  # warm-up
    seconds.clear()
    calls.clear()
    decoder_by_rows.clear()
    steps_before = {setup: engine.num_steps for setup, engine in engines.items()}
    wall = dict.fromkeys(setups, 0.0)
    tokens = dict.fromkeys(setups, 0)
    if args.concurrency == 1:
        for turn, prompt in enumerate(prompts):
            for setup in (setups if turn % 2 == 0 else setups[::-1]):
                current[0] = setup
                started = time.perf_counter()
                tokens[setup] += run_single(engines[setup], prompt, 128, ignore_eos=False).num_tokens
                wall[setup] += time.perf_counter() - started
    else:
        started = time.perf_counter()
        _, tokens[setups[0]] = run_concurrent(engines[setups[0]], prompts, 128)
        wall[setups[0]] = time.perf_counter() - started
    for setup in setups:
        report(setup, args.dtype, args.concurrency, len(prompts), tokens[setup], wall[setup],
               engines[setup].num_steps - steps_before[setup])
    if len(setups) > 1:
        base = setups[0]
        for setup in setups[1:]:
            print(f"{setup} against {base}: {(tokens[setup] / wall[setup]) / (tokens[base] / wall[base]):.3f}x")


if __name__ == "__main__":
    main()
