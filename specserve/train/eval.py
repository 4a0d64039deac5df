"""``specserve eval-speculator``: acceptance and speed of a speculator on held-out chat prompts.

Greedy decoding. One engine without speculation, one per candidate count (1 = a single chain,
more = a tree of that many paths) with speculation forced on, and one with the adaptive policy
(``auto``, the serving default) share the loaded weights; each batch of prompts runs through every
engine in turn, so the tok/s figures are measured side by side on a noisy shared machine. Outputs
with speculation must equal the plain ones token for token; the report says whether they did.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from specserve.train.data import default_prompt_file, load_prompts


def evaluate_speculator(args: argparse.Namespace) -> dict[str, Any]:
    from specserve.engine.llm import LLM
    from specserve.engine.model_setup import load_bundle
    from specserve.sampling_params import SamplingParams

    torch.set_num_threads(args.threads or 1)
    convs = load_prompts(args.prompts or default_prompt_file("heldout"))[:args.num_prompts or None]
    bundle = load_bundle(args.model, args.dtype, args.device)
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    common = dict(bundle=bundle, dtype=args.dtype, kv_cache_memory="512MiB", max_num_seqs=max(args.batch_size, 1),
                  enable_prefix_caching=False)
    if not args.speculator:
        raise ValueError("--speculator is required")
    engines: dict[str, Any] = {"plain": LLM(**common)}
    # default: a single chain and the speculator's own tree, side by side
    counts = [args.num_candidates] if args.num_candidates else [1, None]
    if args.speculator == "ngram":
        counts = counts[:1]
    depth = getattr(args, "num_speculative_tokens", None)
    siblings = getattr(args, "chain_siblings", None)
    for cands in counts:
        name = "spec" if cands is None else f"spec_c{cands}"
        engines[name] = LLM(**common, speculator=args.speculator, speculation="on", num_candidates=cands,
                            num_speculative_tokens=depth, chain_siblings=siblings)
    engines["spec_auto"] = LLM(**common, speculator=args.speculator, speculation="auto",
                               num_candidates=args.num_candidates, num_speculative_tokens=depth,
                               chain_siblings=siblings)
    elapsed = dict.fromkeys(engines, 0.0)
    tokens: dict[str, list[list[int]]] = {name: [] for name in engines}
    for start in range(0, len(convs), args.batch_size):
        batch = convs[start:start + args.batch_size]
        for name, llm in engines.items():
            t0 = time.perf_counter()
            outs = llm.chat(batch, params)
            elapsed[name] += time.perf_counter() - t0
            tokens[name] += [list(o.outputs[0].token_ids) for o in outs]
    num_tokens = sum(len(t) for t in tokens["plain"])
    report: dict[str, Any] = {
        "speculator": args.speculator, "num_prompts": len(convs), "max_tokens": args.max_tokens,
        "batch_size": args.batch_size, "dtype": args.dtype, "threads": torch.get_num_threads(),
        "generated_tokens": num_tokens, "plain_tok_s": num_tokens / elapsed["plain"], "runs": {}}
    for name, llm in engines.items():
        if name == "plain":
            continue
        stats = llm.stats()
        report["runs"][name] = {
            "speculation": llm.engine.runner.spec.policy.mode if llm.engine.runner.spec else None,
            "max_depth": llm.engine.runner.spec.policy.max_depth if llm.engine.runner.spec else None,
            "num_candidates": llm.engine.runner.spec.policy.max_candidates if llm.engine.runner.spec else None,
            "mean_accepted_tokens_per_step": stats.get("mean_accepted_tokens_per_step"),
            "spec_acceptance_per_stage": stats.get("spec_acceptance_per_stage"),
            "spec_accepted_length_histogram": stats.get("spec_accepted_length_histogram"),
            "spec_proposal_ms_per_step": stats.get("spec_proposal_ms_per_step"),
            "spec_proposal_time_share": stats.get("spec_proposal_time_share"),
            "spec_outcome_holds": stats.get("spec_outcome_holds"),
            # The base step's time by batched tokens, as the adaptive policy measured it (decode and
            # verification steps): what verifying more draft tokens costs on this machine.
            "step_ms_by_tokens": {n: round(1e3 * sec, 3) for n, sec in
                                  sorted(llm.engine.runner.spec.policy.cost.buckets.items())}
            if llm.engine.runner.spec else {},
            "tok_s": sum(len(t) for t in tokens[name]) / elapsed[name],
            "speedup": elapsed["plain"] / elapsed[name] * sum(len(t) for t in tokens[name]) / max(num_tokens, 1),
            "outputs_identical": tokens[name] == tokens["plain"],
            "num_identical": sum(a == b for a, b in zip(tokens[name], tokens["plain"])),
        }
    return report


def print_report(report: dict[str, Any]) -> str:
    lines = [f"speculator {report['speculator']}: {report['num_prompts']} prompts, greedy, "
             f"max {report['max_tokens']} tokens, batch {report['batch_size']}, {report['dtype']}, "
             f"{report['threads']} thread(s)",
             f"without speculation: {report['plain_tok_s']:.1f} tok/s"]
    for name, run in report["runs"].items():
        stages = " / ".join(f"{a:.2f}" for a in run["spec_acceptance_per_stage"] or [])
        mean = run["mean_accepted_tokens_per_step"]
        lines.append(
            f"{name}: speculation {run['speculation']}, depth {run['max_depth']}, candidates "
            f"{run['num_candidates']}, mean accepted tokens/step "
            f"{mean if mean is None else round(mean, 3)} (bonus included), per stage {stages}, "
            f"histogram {run['spec_accepted_length_histogram']}, speculator {_ms(run)} per step "
            f"({_share(run)} of the base step), {run['tok_s']:.1f} tok/s "
            f"({run['speedup']:.2f}x), identical outputs: {run['outputs_identical']} "
            f"({run['num_identical']}/{report['num_prompts']})")
    return "\n".join(lines)


def _ms(run: dict[str, Any]) -> str:
    value = run.get("spec_proposal_ms_per_step")
    return "-" if value is None else f"{value:.2f} ms"


def _share(run: dict[str, Any]) -> str:
    value = run.get("spec_proposal_time_share")
    return "-" if value is None else f"{100 * value:.1f}%"
