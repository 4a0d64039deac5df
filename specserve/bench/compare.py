"""`specserve bench compare`: specserve against transformers on the same weights, in one run.

Reports single-request decode tokens/s and total tokens/s with N concurrent requests, each as a ratio
to transformers measured in the same process (the machines are noisy; ratios travel, absolutes don't).

Also, on the typo-correction prompt (most of the answer can be copied from the prompt), single-request
decode with and without prompt lookup: transformers' assisted generation (``prompt_lookup_num_tokens``)
against specserve's ngram speculator; and llama.cpp (plain and ``LlamaPromptLookupDecoding``) when
``llama-cpp-python`` is installed (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from specserve.bench.common import (
    BenchResult,
    MachineInfo,
    chat_messages,
    chat_prompt_ids,
    rewrite_messages,
    rewrite_prompt_ids,
)
from specserve.bench.engine_runs import median, run_concurrent, run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu", help="specserve's and transformers' device")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="single-request runs (median)")
    parser.add_argument("--batch-repeats", type=int, default=2,
                        help="concurrent-batch runs per system; the fastest counts (other load only slows a run)")
    parser.add_argument("--speculator", default=None, help="also run specserve with this speculator")
    parser.add_argument("--skip-hf", action="store_true", help="specserve only")
    parser.add_argument("--skip-rewrite", action="store_true", help="no prompt-lookup runs on the rewrite prompt")
    parser.add_argument("--prompt-lookup", type=int, default=10,
                        help="draft tokens of transformers' and llama.cpp's prompt lookup")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    parser.add_argument("--json", default=None, help="write the result here")


def _fastest_rate(run_batch: Callable[[], tuple[float, int]], repeats: int) -> float:
    """Tokens/s of the fastest of ``repeats`` runs of (seconds, tokens): other load only slows a run."""
    return max(tokens / seconds for seconds, tokens in (run_batch() for _ in range(max(1, repeats))))


def run(args: argparse.Namespace) -> BenchResult:
    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype, args.device)
    tok = bundle.tokenizer
    prompts = [chat_prompt_ids(tok, i) for i in range(args.concurrency)]
    result = BenchResult("compare", {"model": str(bundle.model_dir.name), "dtype": args.dtype,
                                     "max_tokens": args.max_tokens, "concurrency": args.concurrency,
                                     "prompt_tokens": [len(p) for p in prompts[:8]]}, machine)
    configs: list[tuple[str, dict[str, Any]]] = [("specserve", {})]
    if args.speculator:
        configs.append((f"specserve+{args.speculator}", {"speculator": args.speculator, "speculation": "auto"}))
    engine_rates: dict[str, tuple[float, float]] = {}
    for label, extra in configs:
        engine = LLMEngine(build_engine_config(dtype=args.dtype, device=args.device,
                                               max_num_seqs=max(64, args.concurrency),
                                               **extra), bundle)
        run_single(engine, prompts[0], 8)  # warm-up
        singles = [run_single(engine, prompts[0], args.max_tokens) for _ in range(args.repeats)]
        batch = _fastest_rate(lambda: run_concurrent(engine, prompts, args.max_tokens), args.batch_repeats)
        engine_rates[label] = (median([s.decode_tok_s for s in singles]), batch)
        if "spec_steps" in engine.stats():
            result.extra[f"{label} mean_accepted_tokens_per_step"] = engine.stats()["mean_accepted_tokens_per_step"]
    hf_single = hf_batch = None
    if not args.skip_hf:
        from specserve.bench.hf_runs import hf_single_decode, hf_static_batch, load_hf

        hf = load_hf(bundle.model_dir, bundle.dtype).to(bundle.device)
        pad = bundle.eos_token_ids[0]
        hf_single_decode(hf, prompts[0], 8, pad)  # warm-up
        hf_single = median([hf_single_decode(hf, prompts[0], args.max_tokens, pad)[0] for _ in range(args.repeats)])
        hf_batch = _fastest_rate(lambda: hf_static_batch(hf, prompts, args.max_tokens, pad), args.batch_repeats)
        result.rows.append({"system": "transformers", "single_decode_tok_s": hf_single,
                            f"total_tok_s_{args.concurrency}": hf_batch, "single_x_hf": 1.0, "batch_x_hf": 1.0})
    for label, (single, batch) in engine_rates.items():
        result.rows.append({"system": label, "single_decode_tok_s": single, f"total_tok_s_{args.concurrency}": batch,
                            "single_x_hf": single / hf_single if hf_single else None,
                            "batch_x_hf": batch / hf_batch if hf_batch else None})
    if not args.skip_rewrite:
        _rewrite_runs(args, bundle, result)
    if not args.skip_llama_cpp and bundle.device.type != "cpu":
        result.notes.append("llama.cpp skipped: it runs on the CPU here, specserve on " + str(bundle.device))
    elif not args.skip_llama_cpp:
        _llama_cpp_runs(args, bundle, result)
    result.extra["load_average_1m_at_end"] = MachineInfo.read().load_average_1m
    result.extra["torch_threads"] = torch.get_num_threads()
    return result.finish(args)


def _rewrite_runs(args: argparse.Namespace, bundle: Any, result: BenchResult) -> None:
    """Single-request decode on the rewrite prompt, each system with and without prompt lookup."""
    prompt = rewrite_prompt_ids(bundle.tokenizer)
    rows: list[dict[str, Any]] = []
    setups: list[tuple[str, dict[str, Any]]] = [("specserve", {}),
                                                ("specserve + ngram", {"speculator": "ngram", "speculation": "on"})]
    for label, extra in setups:
        engine = LLMEngine(build_engine_config(dtype=args.dtype, device=args.device, max_num_seqs=1,
                                               kv_cache_memory="256MiB",
                                               **extra), bundle)
        run_single(engine, prompt, 8)  # warm-up
        before = engine.stats()
        rate = median([run_single(engine, prompt, args.max_tokens).decode_tok_s for _ in range(args.repeats)])
        after = engine.stats()
        steps = after.get("spec_steps", 0) - before.get("spec_steps", 0)
        emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
        rows.append({"system": label, "decode_tok_s": rate, "mean_accepted": emitted / steps if steps else None})
    if not args.skip_hf:
        from specserve.bench.hf_runs import hf_single_decode, load_hf

        hf = load_hf(bundle.model_dir, bundle.dtype).to(bundle.device)
        pad = bundle.eos_token_ids[0]
        for label, lookup in (("transformers", None), (f"transformers + prompt lookup {args.prompt_lookup}",
                                                        args.prompt_lookup)):
            hf_single_decode(hf, prompt, 8, pad, prompt_lookup=lookup)  # warm-up
            rate = median([hf_single_decode(hf, prompt, args.max_tokens, pad, prompt_lookup=lookup)[0]
                           for _ in range(args.repeats)])
            rows.append({"system": label, "decode_tok_s": rate, "mean_accepted": None})
    for row in rows:  # speed-up of each lookup row over the same system without it
        plain = next(r for r in rows if r["system"] == row["system"].split(" + ")[0])
        row["x_without_lookup"] = row["decode_tok_s"] / plain["decode_tok_s"]
    result.tables["rewrite prompt: single-request decode, with and without prompt lookup"] = rows


def _llama_cpp_runs(args: argparse.Namespace, bundle: Any, result: BenchResult) -> None:
    from specserve.bench.llamacpp_runs import llama_cpp_problem, llama_single_decode, load_llama

    gguf, problem = llama_cpp_problem(args.model)
    if gguf is None:
        result.notes.append(problem or "llama.cpp skipped")
        return
    threads = torch.get_num_threads()
    chat_text = bundle.tokenizer.apply_chat_template(chat_messages(0), add_generation_prompt=True)
    llm = load_llama(gguf, threads)
    llama_single_decode(llm, chat_text, 8)  # warm-up
    rate = median([llama_single_decode(llm, chat_text, args.max_tokens)[0] for _ in range(args.repeats)])
    hf_row = next((r for r in result.rows if r["system"] == "transformers"), None)
    result.rows.append({"system": f"llama.cpp ({gguf.name}, its own precision)", "single_decode_tok_s": rate,
                        f"total_tok_s_{args.concurrency}": None,
                        "single_x_hf": rate / hf_row["single_decode_tok_s"] if hf_row else None,
                        "batch_x_hf": None})
    if args.skip_rewrite:
        return
    rewrite_text = bundle.tokenizer.apply_chat_template(rewrite_messages(), add_generation_prompt=True)
    rows = result.tables.setdefault("rewrite prompt: single-request decode, with and without prompt lookup", [])
    plain = None
    for label, lookup in (("llama.cpp", None),
                          (f"llama.cpp + prompt lookup {args.prompt_lookup}", args.prompt_lookup)):
        llm = load_llama(gguf, threads, lookup)
        llama_single_decode(llm, rewrite_text, 8)  # warm-up
        rate = median([llama_single_decode(llm, rewrite_text, args.max_tokens)[0] for _ in range(args.repeats)])
        plain = plain or rate
        rows.append({"system": label, "decode_tok_s": rate, "mean_accepted": None,
                     "x_without_lookup": rate / plain})
