"""`specserve bench memory`: what paged KV blocks save against a contiguous cache, and what speculation costs.

Run 1 (no speculation, prefix caching off so that every request owns its blocks): ``--num-requests``
requests are queued at once on an engine with a ``--kv-cache-memory`` budget. After every step the
running requests are sampled:

- paged: slots allocated = blocks in each request's table x block size;
- contiguous: slots a cache preallocated to each request's maximum length would hold, i.e. prompt +
  ``--max-tokens`` (the client's limit, all a server knows in advance), and, as a second baseline, the
  model's context length (what a static cache per sequence reserves);
- tokens held = each request's ``num_computed_tokens`` (the slots that contain K/V).

``*_waste_fraction`` = (allocated - held) / allocated at each step, averaged over the steps of the run.
From the same samples: bytes allocated per held token, and how many requests each scheme fits in the
budget (paged: the budget over the mean allocation of a running request; contiguous: the budget over
the reservation). ``paged_peak_running`` is what the engine actually ran at once.

Output lengths: ``--lengths eos`` lets the model stop by itself (real traffic: requests end well before
their limit); ``--lengths uniform`` draws each request's length uniformly in [max_tokens/8, max_tokens]
(a random-weight model never emits EOS).

Run 2 (speculation on): each step's draft tokens need slots of their own; the extra blocks a request
holds for them during a step (beyond its real tokens) are recorded from the scheduler's output.
"""

from __future__ import annotations

import argparse
import random
from typing import Any

from specserve.bench.common import BenchResult, MachineInfo, chat_prompt_ids
from specserve.bench.configs import learned_speculator_problem
from specserve.core.outputs import SchedulerOutput
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.sampling_params import SamplingParams
from specserve.worker.model_runner import kv_bytes_per_block


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--max-tokens", type=int, default=256, help="each request's limit")
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument("--kv-cache-memory", default="256MiB", help="the budget both schemes share")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--lengths", default="eos", choices=["eos", "uniform"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speculator", default="default",
                        help="speculator of run 2 (falls back to ngram when absent); 'none' skips run 2")
    parser.add_argument("--json", default=None, help="write the result here")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _Sampler:
    """Allocated vs held KV slots of the running requests, after each step."""

    def __init__(self, engine: LLMEngine, limits: dict[str, int], model_len: int) -> None:
        self.engine = engine
        self.limits = limits  # request id -> contiguous reservation (slots)
        self.model_len = model_len
        self.paged_fracs: list[float] = []
        self.contig_fracs: list[float] = []
        self.model_len_fracs: list[float] = []
        self.sums = {"paged": 0, "contiguous": 0, "model_len": 0, "held": 0, "running": 0}
        self.peak_running = 0

    def sample(self) -> None:
        running = self.engine.scheduler.running
        if not running:
            return
        block_size = self.engine.kv.block_size
        paged = sum(len(self.engine.kv.get_block_ids(r.request_id)) for r in running) * block_size
        contig = sum(self.limits[r.request_id] for r in running)
        model_len = len(running) * self.model_len
        held = sum(r.num_computed_tokens for r in running)
        self.paged_fracs.append((paged - held) / paged if paged else 0.0)
        self.contig_fracs.append((contig - held) / contig)
        self.model_len_fracs.append((model_len - held) / model_len)
        for key, value in (("paged", paged), ("contiguous", contig), ("model_len", model_len),
                           ("held", held), ("running", len(running))):
            self.sums[key] += value
        self.peak_running = max(self.peak_running, len(running))


def _submit(engine: LLMEngine, prompts: list[list[int]], lengths: list[int] | None, max_tokens: int,
            tag: str) -> list[str]:
    ids = []
    for i, prompt in enumerate(prompts):
        if lengths is None:
            params = SamplingParams(temperature=0, max_tokens=max_tokens)
        else:
            params = SamplingParams(temperature=0, max_tokens=lengths[i], ignore_eos=True)
        request_id = f"mem-{tag}-{i}"
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
        ids.append(request_id)
    return ids


def _paged_run(engine: LLMEngine, prompts: list[list[int]], lengths: list[int] | None,
               max_tokens: int) -> tuple[_Sampler, int]:
    ids = _submit(engine, prompts, lengths, max_tokens, "paged")
    model_len = engine.max_model_len
    limits = {rid: min(len(p) + max_tokens, model_len) for rid, p in zip(ids, prompts)}
    sampler = _Sampler(engine, limits, model_len)
    num_output = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                num_output += len(out.outputs[0].token_ids)
        sampler.sample()
    return sampler, num_output


def _spec_run(engine: LLMEngine, prompts: list[list[int]], lengths: list[int] | None,
              max_tokens: int) -> dict[str, Any]:
    """Extra KV blocks each request holds for its draft tokens during a step (from the scheduler)."""
    block_size = engine.kv.block_size
    extra_blocks: list[int] = []
    draft_tokens: list[int] = []
    schedule = engine.scheduler.schedule

    def recording_schedule() -> SchedulerOutput:
        out = schedule()
        for item in out.scheduled:
            if item.spec_token_ids:
                real = item.num_computed_tokens + item.num_new_tokens
                num_spec = len(item.spec_token_ids)
                draft_tokens.append(num_spec)
                extra_blocks.append(_cdiv(real + num_spec, block_size) - _cdiv(real, block_size))
        return out

    engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
    try:
        _submit(engine, prompts, lengths, max_tokens, "spec")
        while engine.has_unfinished_requests():
            engine.step()
    finally:
        del engine.scheduler.schedule  # back to the class's method
    runner = engine.runner
    max_nodes = runner.max_spec_depth * runner.max_spec_candidates
    return {
        "spec_request_steps": len(draft_tokens),
        "spec_draft_tokens_mean": sum(draft_tokens) / len(draft_tokens) if draft_tokens else 0.0,
        "spec_draft_tokens_max": max(draft_tokens, default=0),
        "spec_extra_blocks_per_request_mean": sum(extra_blocks) / len(extra_blocks) if extra_blocks else 0.0,
        "spec_extra_blocks_per_request_max": max(extra_blocks, default=0),
        "spec_max_draft_tokens_bound": max_nodes,  # depth x candidates
        # Drafts first fill the free slots of the last block: never more than cdiv(nodes, block_size).
        "spec_extra_blocks_bound": _cdiv(max_nodes, block_size),
    }


def run(args: argparse.Namespace) -> BenchResult:
    if args.num_requests < 1 or args.max_tokens < 1:
        raise ValueError("--num-requests and --max-tokens must be >= 1")
    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype)
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(args.num_requests)]
    rng = random.Random(args.seed)
    lengths = None
    if args.lengths == "uniform":
        lengths = [rng.randint(max(1, args.max_tokens // 8), args.max_tokens) for _ in prompts]
    common: dict[str, Any] = {"dtype": args.dtype, "kv_cache_memory": args.kv_cache_memory,
                               "block_size": args.block_size, "max_num_seqs": args.max_num_seqs,
                               "enable_prefix_caching": False}
    engine = LLMEngine(build_engine_config(**common), bundle)
    arch = bundle.arch
    block_bytes = kv_bytes_per_block(arch.num_layers, args.block_size, arch.num_kv_heads, arch.head_dim,
                                     bundle.dtype)
    slot_bytes = block_bytes / args.block_size
    budget_slots = engine.m.num_blocks * args.block_size
    sampler, num_output = _paged_run(engine, prompts, lengths, args.max_tokens)
    stats = engine.stats()
    del engine
    s = sampler.sums
    mean_paged = s["paged"] / s["running"]
    mean_contig = s["contiguous"] / s["running"]
    result = BenchResult("memory", {
        "model": bundle.model_dir.name, "dtype": args.dtype, "max_tokens": args.max_tokens,
        "num_requests": args.num_requests, "max_num_seqs": args.max_num_seqs, "block_size": args.block_size,
        "kv_cache_memory": args.kv_cache_memory, "budget_slots": budget_slots, "lengths": args.lengths,
        "seed": args.seed, "prefix_caching": False,
        "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts),
        "max_model_len": sampler.model_len}, machine)
    result.extra.update({
        "paged_waste_fraction": sum(sampler.paged_fracs) / len(sampler.paged_fracs),
        "contiguous_waste_fraction": sum(sampler.contig_fracs) / len(sampler.contig_fracs),
        "contiguous_model_len_waste_fraction": sum(sampler.model_len_fracs) / len(sampler.model_len_fracs),
        "kv_bytes_per_token": slot_bytes,
        "mean_output_tokens": num_output / args.num_requests,
        "paged_peak_running": sampler.peak_running,
        "paged_mean_running": s["running"] / len(sampler.paged_fracs),
        "preemptions": stats["num_preemptions"],
        "steps_sampled": len(sampler.paged_fracs),
    })
    result.rows = [
        {"scheme": "paged blocks", "waste_fraction": result.extra["paged_waste_fraction"],
         "bytes_per_held_token": slot_bytes * s["paged"] / s["held"],
         "slots_per_request": mean_paged, "requests_fit": budget_slots / mean_paged},
        {"scheme": "contiguous, prompt + max_tokens", "waste_fraction": result.extra["contiguous_waste_fraction"],
         "bytes_per_held_token": slot_bytes * s["contiguous"] / s["held"],
         "slots_per_request": mean_contig, "requests_fit": budget_slots // round(mean_contig)},
        {"scheme": "contiguous, max_model_len",
         "waste_fraction": result.extra["contiguous_model_len_waste_fraction"],
         "bytes_per_held_token": slot_bytes * s["model_len"] / s["held"],
         "slots_per_request": sampler.model_len, "requests_fit": budget_slots // sampler.model_len},
    ]
    result.extra["paged_requests_fit"] = result.rows[0]["requests_fit"]
    result.extra["contiguous_requests_fit"] = result.rows[1]["requests_fit"]
    if args.speculator != "none":
        spec = args.speculator
        problem = learned_speculator_problem(spec, bundle.model_dir) if spec != "ngram" else None
        if problem is not None:
            result.notes.append(f"run 2 uses prompt lookup (ngram): {problem}")
            spec = "ngram"
        engine = LLMEngine(build_engine_config(speculator=spec, speculation="on", **common), bundle)
        fields = _spec_run(engine, prompts, lengths, args.max_tokens)
        del engine
        fields["spec_speculator"] = spec
        # The candidate tokens' own slots (what a cache with per-token granularity would add) ...
        fields["spec_draft_slot_bytes_mean"] = fields["spec_draft_tokens_mean"] * slot_bytes
        fields["spec_draft_slot_bytes_max"] = fields["spec_draft_tokens_max"] * slot_bytes
        # ... and the whole blocks they made a request take beyond its real tokens.
        fields["spec_extra_bytes_per_request_mean"] = fields["spec_extra_blocks_per_request_mean"] * block_bytes
        fields["spec_extra_bytes_per_request_max"] = fields["spec_extra_blocks_per_request_max"] * block_bytes
        fields["spec_extra_bytes_per_request_bound"] = fields["spec_extra_blocks_bound"] * block_bytes
        result.extra.update(fields)
        result.tables["speculation: extra KV per request during a step"] = [
            {"speculator": spec, "draft_tokens_mean": fields["spec_draft_tokens_mean"],
             "draft_tokens_max": fields["spec_draft_tokens_max"],
             "draft_slots_KiB_mean": fields["spec_draft_slot_bytes_mean"] / 2**10,
             "draft_slots_KiB_max": fields["spec_draft_slot_bytes_max"] / 2**10,
             "extra_blocks_mean": fields["spec_extra_blocks_per_request_mean"],
             "extra_MiB_mean": fields["spec_extra_bytes_per_request_mean"] / 2**20,
             "extra_MiB_max": fields["spec_extra_bytes_per_request_max"] / 2**20,
             "extra_MiB_bound": fields["spec_extra_bytes_per_request_bound"] / 2**20}]
    return result.finish(args)
