"""Per-step time of the engine with the model sharded over N ranks against one process (CPU, gloo).

    python benchmarks/tp_step_time.py --model PATH --tensor-parallel-size 2 --threads 1 --batch 1 8

Prints the configuration, then per batch size: the median and mean time of a decode step (every
request one token) and of the prefill step, measured around LLMEngine.step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from specserve import LLM, SamplingParams


def measure(llm: LLM, batch: int, prompt_len: int, decode_steps: int) -> tuple[list[float], float]:
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=decode_steps + 1, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"b{batch}-{i}", [(7 * i + j) % 50 + 2 for j in range(prompt_len)], params)
    times = []
    while engine.has_unfinished_requests():
        started = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - started)
    return times[1:-1], times[0]  # decode steps (the last one only flushes), the prefill step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--decode-steps", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM(model=args.model, tensor_parallel_size=args.tensor_parallel_size, kv_cache_memory="64MiB",
              enable_prefix_caching=False)
    arch = llm.engine.m.bundle.arch
    print(f"model={args.model or 'default'} layers={arch.num_layers} hidden={arch.hidden_size} "
          f"heads={arch.num_heads}/{arch.num_kv_heads} vocab={arch.vocab_size} "
          f"tp={args.tensor_parallel_size} threads/rank={args.threads} prompt={args.prompt_len}")
    measure(llm, 1, 8, 4)  # warm-up
    for batch in args.batch:
        decode, prefill = measure(llm, batch, args.prompt_len, args.decode_steps)
        print(f"batch {batch:3d}: decode step median {1e3 * statistics.median(decode):7.2f} ms, "
              f"mean {1e3 * statistics.mean(decode):7.2f} ms ({len(decode)} steps); "
              f"prefill step {1e3 * prefill:7.2f} ms")
    shutdown = getattr(llm.engine.runner, "shutdown", None)
    if shutdown is not None:
        shutdown()


if __name__ == "__main__":
    main()
