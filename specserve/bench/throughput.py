"""`specserve bench throughput`: offline, ``--num-requests`` requests submitted at once.

For each concurrency c (the engine runs at most c requests at a time, ``max_num_seqs = c``) and each
speculation setup, all requests are queued together and the engine runs until the last one ends.
Reported: generated tokens/s over the whole run, requests/s, and the ratio to speculation off at the
same concurrency (where adaptive speculation must not lose): of the fastest rounds (``x_off``), and the
median, least and most of the ratios taken round by round (``x_off_round_*``), setups interleaved.
Prompts are the chat prompts, each made distinct by a ticket number (they share the system prompt, so
prefix caching helps as in real traffic); greedy, exactly ``--max-tokens`` tokens each.
"""

from __future__ import annotations

import argparse
import statistics

from specserve.bench.common import BenchResult, MachineInfo, chat_prompt_ids, parse_int_list, turn_order
from specserve.bench.configs import SETUP_NAMES, resolve_setups
from specserve.bench.engine_runs import run_concurrent
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay plain decode steps as CUDA graphs")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated max running requests")
    parser.add_argument("--configs", default="off,auto,on", help=f"from {', '.join(SETUP_NAMES)}")
    parser.add_argument("--speculator", default="default", help="the learned speculator of mlp/auto/on")
    parser.add_argument("--kv-cache-memory", default="1GiB")
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds per concurrency, the setups interleaved; each setup's fastest round is kept, "
                             "and the median, least and most of its per-round ratios to off are reported")
    parser.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> BenchResult:
    concurrencies = parse_int_list(args.concurrency)
    if args.num_requests < 1:
        raise ValueError("--num-requests must be >= 1")
    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype, args.device)
    setups, notes = resolve_setups(args.configs, args.speculator, bundle.model_dir)
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(args.num_requests)]
    result = BenchResult("throughput", {
        "model": bundle.model_dir.name, "dtype": args.dtype, "device": args.device,
        "cuda_graphs": args.cuda_graphs, "max_tokens": args.max_tokens,
        "num_requests": args.num_requests, "concurrency": concurrencies,
        "configs": [s._asdict() for s in setups], "speculator": args.speculator,
        "kv_cache_memory": args.kv_cache_memory, "max_num_batched_tokens": args.max_num_batched_tokens,
        "repeats": args.repeats, "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "greedy": True, "ignore_eos": True},
        machine, notes=notes)
    baseline: dict[int, float] = {}
    if args.repeats < 1:
        raise ValueError("--repeats must be >= 1")
    for concurrency in concurrencies:
        engines = []
        for setup in setups:
            engine = LLMEngine(build_engine_config(
                dtype=args.dtype, device=args.device, kv_cache_memory=args.kv_cache_memory,
                max_num_seqs=concurrency, cuda_graphs=args.cuda_graphs,
                max_num_batched_tokens=args.max_num_batched_tokens, **setup.engine_kwargs), bundle)
            # Warm-up at this batch size (also gives the adaptive policy its first step costs).
            run_concurrent(engine, prompts[:concurrency], 8)
            engines.append(engine)
        best: dict[int, dict] = {}
        rounds: dict[int, list[float]] = {index: [] for index in range(len(setups))}  # tokens/s per round
        # Rounds interleave the setups, so a slow spell of the shared machine hits them alike.
        for round_index in range(args.repeats):
            for index in turn_order(len(setups), round_index):
                setup, engine = setups[index], engines[index]
                engine.kv.reset_prefix_cache()
                before = engine.stats()
                seconds, tokens = run_concurrent(engine, prompts, args.max_tokens)
                after = engine.stats()
                steps = after.get("spec_steps", 0) - before.get("spec_steps", 0)
                emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
                row = {
                    "config": setup.label, "concurrency": concurrency, "requests": args.num_requests,
                    "seconds": seconds, "total_tok_s": tokens / seconds, "req_s": args.num_requests / seconds,
                    "x_off": None,
                    "spec_steps": steps, "mean_accepted": emitted / steps if steps else None,
                    "preemptions": after["num_preemptions"] - before["num_preemptions"],
                }
                rounds[index].append(row["total_tok_s"])
                if index not in best or row["total_tok_s"] > best[index]["total_tok_s"]:
                    best[index] = row
        off_index = next((i for i, setup in enumerate(setups) if setup.is_baseline), None)
        for index, setup in enumerate(setups):
            row = best[index]
            if off_index is not None:
                # Each round's ratio to `off` in the same round: a paired figure, robust to slow spells.
                paired = [a / b for a, b in zip(rounds[index], rounds[off_index])]
                row.update(x_off_round_median=statistics.median(paired), x_off_round_min=min(paired),
                           x_off_round_max=max(paired))
                # every round's ratio, for paired statistics across rounds
                result.extra.setdefault("x_off_rounds", {})[f"{setup.label} @ {concurrency}"] = paired
            result.rows.append(row)
            if setup.is_baseline:
                baseline[concurrency] = row["total_tok_s"]
        del engines
    for row in result.rows:  # ratios once every setup ran, whatever the order of --configs
        off = baseline.get(row["concurrency"])
        row["x_off"] = row["total_tok_s"] / off if off else None
    return result.finish(args)
