"""`specserve bench compare`: specserve against transformers on the same weights, in one run.

Reports single-request decode tokens/s and total tokens/s with N concurrent requests, each as a ratio
to transformers measured in the same process (the machines are noisy; ratios travel, absolutes don't).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from specserve.bench.common import BenchResult, MachineInfo, chat_messages
from specserve.bench.engine_runs import median, run_concurrent, run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="single-request runs (median)")
    parser.add_argument("--speculator", default=None, help="also run specserve with this speculator")
    parser.add_argument("--skip-hf", action="store_true", help="specserve only")
    parser.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> BenchResult:
    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype)
    tok = bundle.tokenizer
    prompts = [tok.encode(tok.apply_chat_template(chat_messages(i), add_generation_prompt=True))
               for i in range(args.concurrency)]
    result = BenchResult("compare", {"model": str(bundle.model_dir.name), "dtype": args.dtype,
                                     "max_tokens": args.max_tokens, "concurrency": args.concurrency,
                                     "prompt_tokens": [len(p) for p in prompts[:8]]}, machine)
    configs: list[tuple[str, dict[str, Any]]] = [("specserve", {})]
    if args.speculator:
        configs.append((f"specserve+{args.speculator}", {"speculator": args.speculator, "speculation": "auto"}))
    engine_rates: dict[str, tuple[float, float]] = {}
    for label, extra in configs:
        engine = LLMEngine(build_engine_config(dtype=args.dtype, max_num_seqs=max(64, args.concurrency),
                                               **extra), bundle)
        run_single(engine, prompts[0], 8)  # warm-up
        singles = [run_single(engine, prompts[0], args.max_tokens) for _ in range(args.repeats)]
        seconds, tokens = run_concurrent(engine, prompts, args.max_tokens)
        engine_rates[label] = (median([s.decode_tok_s for s in singles]), tokens / seconds)
        if "spec_steps" in engine.stats():
            result.extra[f"{label} mean_accepted_tokens_per_step"] = engine.stats()["mean_accepted_tokens_per_step"]
    hf_single = hf_batch = None
    if not args.skip_hf:
        from specserve.bench.hf_runs import hf_single_decode, hf_static_batch, load_hf

        hf = load_hf(bundle.model_dir, bundle.dtype)
        pad = bundle.eos_token_ids[0]
        hf_single_decode(hf, prompts[0], 8, pad)  # warm-up
        hf_single = median([hf_single_decode(hf, prompts[0], args.max_tokens, pad)[0] for _ in range(args.repeats)])
        seconds, tokens = hf_static_batch(hf, prompts, args.max_tokens, pad)
        hf_batch = tokens / seconds
        result.rows.append({"system": "transformers", "single_decode_tok_s": hf_single,
                            f"total_tok_s_{args.concurrency}": hf_batch, "single_x_hf": 1.0, "batch_x_hf": 1.0})
    for label, (single, batch) in engine_rates.items():
        result.rows.append({"system": label, "single_decode_tok_s": single, f"total_tok_s_{args.concurrency}": batch,
                            "single_x_hf": single / hf_single if hf_single else None,
                            "batch_x_hf": batch / hf_batch if hf_batch else None})
    result.extra["load_average_1m_at_end"] = MachineInfo.read().load_average_1m
    result.extra["torch_threads"] = torch.get_num_threads()
    return result
