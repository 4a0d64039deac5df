"""`specserve bench latency`: one request at a time, per speculation setup, on two prompt sets.

- ``chat``: the customer-care questions (little to copy from the prompt), or ``--chat-prompts FILE``
  (e.g. the speculator's held-out prompts, ``specserve/train/data/prompts_heldout.jsonl``);
- ``rewrite``: "correct the typos" (most of the answer is in the prompt; prompt lookup's best case).

Each request is greedy and generates exactly ``--max-tokens`` tokens (EOS ignored), or stops at its EOS
with ``--stop-at-eos``; greedy speculation is lossless, so either way every setup does the same work.
The setups take turns request by request (all engines share the weights), so a slow spell of a shared
machine hits them alike. Reported per (setup, prompt set): TTFT, inter-token latency p50/p99 (a step
that brings k tokens counts as k gaps of a k-th of its time), end-to-end latency, decode tokens/s and
its ratio to ``off``, and, for speculative setups, the histogram of accepted draft tokens per step. A
roofline row gives the fastest decode possible without speculation on this machine (see roofline.py).
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

from specserve.bench.common import (
    BenchResult,
    MachineInfo,
    chat_prompt_ids,
    conversation_ids,
    rewrite_prompt_ids,
    turn_order,
)
from specserve.bench.configs import SETUP_NAMES, resolve_setups
from specserve.bench.engine_runs import SingleRun, median, percentile, run_single
from specserve.bench.roofline import measure_bandwidth, roofline_fields
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle

HISTOGRAM_TABLE = "acceptance histogram (accepted draft tokens per step: steps)"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay plain decode steps as CUDA graphs")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--configs", default="off,ngram,mlp,auto", help=f"from {', '.join(SETUP_NAMES)}")
    parser.add_argument("--speculator", default="default", help="the learned speculator of mlp/auto")
    parser.add_argument("--num-prompts", type=int, default=8,
                        help="chat prompts: 1-8 built-in ones, or the first N of --chat-prompts (0: all)")
    parser.add_argument("--chat-prompts", default=None,
                        help=".jsonl of {\"prompt\"} or {\"messages\"} rows for the chat set, e.g. "
                             "specserve/train/data/prompts_heldout.jsonl (default: the built-in questions)")
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="requests end at their EOS (at most --max-tokens) instead of ignoring it")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the prompt set")
    parser.add_argument("--rewrite-prompts", default=None,
                        help=".jsonl of {\"prompt\"} rows for the rewrite set, e.g. benchmarks/prompts_rewrite.jsonl "
                             "(default: the built-in typo prompt)")
    parser.add_argument("--kv-cache-memory", default="256MiB")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="buffer size of the bandwidth test")
    parser.add_argument("--json", default=None, help="write the result here")


def _spec_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Speculation counters of the runs between two engine.stats() snapshots."""
    steps = after.get("spec_steps", 0) - before.get("spec_steps", 0)
    emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
    hist = Counter(after.get("spec_accepted_length_histogram", {}))
    hist.subtract(before.get("spec_accepted_length_histogram", {}))
    return {"spec_steps": steps, "mean_accepted_tokens_per_step": emitted / steps if steps else None,
            "accepted_length_histogram": {int(k): v for k, v in sorted(hist.items()) if v}}


def rewrite_set(tokenizer: Any, path: str | None) -> list[list[int]]:
    """The rewrite prompts' token ids: the built-in typo prompt, or every prompt of a .jsonl file."""
    if path is None:
        return [rewrite_prompt_ids(tokenizer)]
    return _file_set(tokenizer, path, "--rewrite-prompts")


def chat_set(tokenizer: Any, path: str | None, num_prompts: int) -> list[list[int]]:
    """The chat prompts' token ids: the first ``num_prompts`` built-in questions, or of a .jsonl file."""
    if path is None:
        if not 1 <= num_prompts <= 8:
            raise ValueError("--num-prompts must be between 1 and 8 for the built-in chat prompts")
        return [chat_prompt_ids(tokenizer, i) for i in range(num_prompts)]
    if num_prompts < 0:
        raise ValueError("--num-prompts must be >= 0 (0: every prompt of --chat-prompts)")
    return _file_set(tokenizer, path, "--chat-prompts")[:num_prompts or None]


def _file_set(tokenizer: Any, path: str, flag: str) -> list[list[int]]:
    from specserve.train.data import load_prompts

    try:
        conversations = load_prompts(path)
    except OSError as exc:
        raise ValueError(f"cannot read {flag} {path}: {exc.strerror or exc}") from exc
    if not conversations:
        raise ValueError(f"{flag} {path} holds no prompt")
    return [conversation_ids(tokenizer, c) for c in conversations]


def summarize(runs: list[SingleRun]) -> dict[str, Any]:
    gaps = [g for r in runs for g in r.itl_s]
    decode_s = sum(r.e2e_s - r.ttft_s for r in runs)
    return {
        "requests": len(runs),
        "ttft_ms_p50": 1e3 * median([r.ttft_s for r in runs]),
        "itl_ms_p50": 1e3 * percentile(gaps, 50),
        "itl_ms_p99": 1e3 * percentile(gaps, 99),
        "e2e_s_p50": median([r.e2e_s for r in runs]),
        "decode_tok_s": sum(r.num_tokens - 1 for r in runs) / decode_s if decode_s > 0 else float("nan"),
        "e2e_tok_s": sum(r.num_tokens for r in runs) / sum(r.e2e_s for r in runs),
    }


def run(args: argparse.Namespace) -> BenchResult:
    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype, args.device)
    tok = bundle.tokenizer
    prompt_sets = {"chat": chat_set(tok, args.chat_prompts, args.num_prompts),
                   "rewrite": rewrite_set(tok, args.rewrite_prompts)}
    setups, notes = resolve_setups(args.configs, args.speculator, bundle.model_dir)
    bandwidth = measure_bandwidth(args.bandwidth_mib << 20, device=args.device)
    roofline = roofline_fields(bundle.model, bandwidth)
    result = BenchResult("latency", {
        "model": bundle.model_dir.name, "dtype": args.dtype, "device": args.device,
        "cuda_graphs": args.cuda_graphs, "max_tokens": args.max_tokens,
        "configs": [s._asdict() for s in setups], "speculator": args.speculator, "repeats": args.repeats,
        "chat_prompts": args.chat_prompts, "rewrite_prompts": args.rewrite_prompts,
        "prompt_tokens": {k: [len(p) for p in v] for k, v in prompt_sets.items()},
        "greedy": True, "ignore_eos": not args.stop_at_eos}, machine, notes=notes)
    bound = roofline["roofline_decode_tok_s"]
    engines = []
    for setup in setups:
        engine = LLMEngine(build_engine_config(dtype=args.dtype, device=args.device,
                                               kv_cache_memory=args.kv_cache_memory,
                                               max_num_seqs=1, cuda_graphs=args.cuda_graphs,
                                               **setup.engine_kwargs), bundle)
        run_single(engine, prompt_sets["chat"][0], 8)  # warm-up (and first cost samples for auto)
        engines.append(engine)
    ignore_eos = not args.stop_at_eos
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    histograms: dict[tuple[int, str], dict[str, Any]] = {}
    for kind, prompts in prompt_sets.items():
        before = [engine.stats() for engine in engines]
        runs: list[list[SingleRun]] = [[] for _ in setups]
        # Setups take turns request by request: their ratios then see the same machine.
        for turn, prompt in enumerate(prompt for _ in range(args.repeats) for prompt in prompts):
            for index in turn_order(len(engines), turn):
                runs[index].append(run_single(engines[index], prompt, args.max_tokens, ignore_eos))
        for index, setup in enumerate(setups):
            spec = _spec_delta(before[index], engines[index].stats())
            row = {"config": setup.label, "prompts": kind, **summarize(runs[index])}
            row["x_roofline"] = row["decode_tok_s"] / bound
            row["mean_accepted"] = spec["mean_accepted_tokens_per_step"]
            rows[index, kind] = row
            if setup.speculator is not None:
                histograms[index, kind] = {"config": setup.label, "prompts": kind, "spec_steps": spec["spec_steps"],
                                           "mean_accepted": spec["mean_accepted_tokens_per_step"],
                                           "histogram": spec["accepted_length_histogram"]}
        off = next((rows[i, kind] for i, setup in enumerate(setups) if setup.is_baseline), None)
        for index in range(len(setups)):  # decode speed against `off` on the same prompts
            rows[index, kind]["x_off"] = rows[index, kind]["decode_tok_s"] / off["decode_tok_s"] if off else None
    for index in range(len(setups)):
        for kind in prompt_sets:
            result.rows.append(rows[index, kind])
            if (index, kind) in histograms:
                result.tables.setdefault(HISTOGRAM_TABLE, []).append(histograms[index, kind])
    del engines
    result.rows.append({"config": "roofline", "prompts": "-", "decode_tok_s": bound, "x_roofline": 1.0})
    result.extra.update(roofline)
    return result.finish(args)
