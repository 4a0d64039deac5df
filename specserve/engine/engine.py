"""The synchronous engine: add_request / abort_request / step.

A step is ``schedule -> execute -> update``; then text is detokenized incrementally, stop strings are
checked, and one RequestOutput per touched request group is returned. A request with ``n > 1``
becomes n child sequences ("<id>#<i>") that share the prompt's blocks through the prefix cache.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from typing import Any

import torch

from specserve.config import EngineConfig
from specserve.core.kv_cache_manager import KVCacheManager
from specserve.core.scheduler import Scheduler
from specserve.detokenizer import IncrementalDetokenizer
from specserve.engine.model_setup import ModelBundle, load_engine_model
from specserve.engine.sequence import RequestGroup, SequenceState
from specserve.outputs import CompletionOutput, RequestOutput
from specserve.request import Request, RequestStatus
from specserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

PromptInput = str | list[int] | dict[str, Any]


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, bundle: ModelBundle | None = None) -> None:
        self.config = config or EngineConfig()
        self.m = load_engine_model(self.config, bundle)
        self.tokenizer = self.m.tokenizer
        self.max_model_len = self.m.max_model_len
        self.kv = KVCacheManager(self.m.num_blocks, self.config.cache.block_size,
                                 self.config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(self.config.scheduler, self.kv)
        self.runner = self.m.runner
        self.groups: dict[str, RequestGroup] = {}
        self.seq_by_child: dict[str, tuple[RequestGroup, SequenceState]] = {}
        self.num_steps = 0
        self.num_generated_tokens = 0
        self._pending_outputs: list[RequestOutput] = []
        # The model, tokenizer and their Python objects live as long as the engine: move them out of
        # the collector's sight, so that the collections the per-step allocations trigger stay short
        # (they took ~3% of a 32-request decode step, mostly re-scanning these).
        gc.collect()
        gc.freeze()

    # ---- input -------------------------------------------------------------------------------
    def tokenize_prompt(self, prompt: PromptInput) -> tuple[str | None, list[int]]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = prompt["prompt_token_ids"]
                if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                    raise ValueError("prompt_token_ids must be a list of integers")
                return prompt.get("prompt"), list(ids)
            if "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise ValueError(f"unsupported prompt type {type(prompt).__name__}")

    def add_request(self, request_id: str, prompt: PromptInput, params: SamplingParams | None = None) -> None:
        """Validate and queue a request; raises ValueError on bad input (nothing is allocated then)."""
        params = params or SamplingParams()
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self.tokenize_prompt(prompt)
        self.validate_prompt(ids)
        sequences = []
        for index in range(params.n):
            child_params = params
            if params.n > 1:
                seed = None if params.seed is None else params.seed + index
                child_params = dataclasses.replace(params, n=1, seed=seed)
            child_id = request_id if params.n == 1 else f"{request_id}#{index}"
            request = Request(child_id, ids, child_params, frozenset(self.m.eos_token_ids), self.max_model_len)
            detok = IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens)
            sequences.append(SequenceState(request, index, detok))
        group = RequestGroup(request_id, text, ids, params, sequences)
        self.groups[request_id] = group
        for seq in sequences:
            self.seq_by_child[seq.request.request_id] = (group, seq)
            self.scheduler.add_request(seq.request)

    def validate_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; the model's context is {self.max_model_len} "
                             f"tokens and at least one must be left to generate")
        vocab = self.m.vocab_size
        bad = [t for t in ids if t < 0 or t >= vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {vocab})")
        blocks_needed = (len(ids) + 1 + self.config.cache.block_size - 1) // self.config.cache.block_size
        if blocks_needed > self.m.num_blocks:
            raise ValueError(f"prompt needs {blocks_needed} KV blocks but the cache has {self.m.num_blocks}")

    def abort_request(self, request_id: str) -> None:
        """Stop a request at once and free its blocks; unknown ids are ignored."""
        group = self.groups.get(request_id)
        if group is None:
            return
        for seq in group.sequences:
            if seq.finish_reason is None:
                self.scheduler.finish_request(seq.request.request_id, RequestStatus.FINISHED_ABORTED)
                seq.finish_reason = "abort"
        self._pending_outputs.append(self._make_output(group, {}))
        self._forget(group)

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups) or bool(self._pending_outputs)

    # ---- the loop ----------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs, self._pending_outputs = self._pending_outputs, []
        sched = self.scheduler.schedule()
        touched: dict[str, dict[str, list[int]]] = {}
        # Requests the scheduler finished itself (cannot fit) report here.
        for request_id in sched.finished_request_ids:
            self._mark_finished_by_scheduler(request_id, touched)
        if sched.is_empty:
            outputs.extend(self._collect(touched))
            return outputs
        self.num_steps += 1
        try:
            spec = self.runner.spec
            if spec is not None:
                spec.last_proposal_seconds = 0.0
            started = time.perf_counter()
            results = self.runner.execute(sched)
            if spec is not None:
                whole = time.perf_counter() - started
                # The base step alone: the policy prices the next step's proposals per level separately.
                seconds = whole - spec.last_proposal_seconds
                decode_only = all(item.num_new_tokens == 1 for item in sched.scheduled)
                spec.policy.observe_step(sched.num_batched_tokens, seconds, decode_only,
                                         graphed=self.runner.last_step_graphed)
                if decode_only:
                    drafted = any(item.spec_token_ids for item in sched.scheduled)
                    emitted = sum(len(result.token_ids) for result in results.values())
                    spec.policy.observe_outcome(len(sched.scheduled), drafted, emitted, whole)
                spec.stats.record_step_time(seconds, spec.last_proposal_seconds)
        except Exception as exc:
            if getattr(exc, "fatal", False):  # the runner cannot go on (e.g. a tensor-parallel worker died)
                raise
            logger.exception("model step failed; failing the %d scheduled requests", len(sched.scheduled))
            for item in sched.scheduled:
                self.scheduler.finish_request(item.request_id, RequestStatus.FINISHED_ERROR)
                self._mark_finished_by_scheduler(item.request_id, touched)
            outputs.extend(self._collect(touched))
            return outputs
        for request, new_tokens in self.scheduler.update_from_output(sched, results):
            group, seq = self.seq_by_child[request.request_id]
            result = results.get(request.request_id)
            if result is not None and result.logprobs:
                seq.logprobs.extend(result.logprobs[:len(new_tokens)])
            self.num_generated_tokens += len(new_tokens)
            touched.setdefault(group.request_id, {})[request.request_id] = new_tokens
        outputs.extend(self._collect(touched))
        return outputs

    def _mark_finished_by_scheduler(self, child_id: str, touched: dict[str, dict[str, list[int]]]) -> None:
        entry = self.seq_by_child.get(child_id)
        if entry is None:
            return
        group, seq = entry
        touched.setdefault(group.request_id, {}).setdefault(child_id, [])

    def _collect(self, touched: dict[str, dict[str, list[int]]]) -> list[RequestOutput]:
        outputs = []
        for group_id, new_by_child in touched.items():
            group = self.groups[group_id]
            outputs.append(self._make_output(group, new_by_child))
            if group.finished:
                self._forget(group)
        return outputs

    def _forget(self, group: RequestGroup) -> None:
        self.groups.pop(group.request_id, None)
        for seq in group.sequences:
            self.seq_by_child.pop(seq.request.request_id, None)
        # Free the runner's per-request state now, not at the next step (the engine may go idle).
        self.runner.release([seq.request.request_id for seq in group.sequences])

    def _make_output(self, group: RequestGroup, new_by_child: dict[str, list[int]]) -> RequestOutput:
        completions = []
        for seq in group.sequences:
            new_tokens = new_by_child.get(seq.request.request_id, [])
            completions.append(self._advance_sequence(seq, new_tokens))
        first = group.sequences[0].request
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
            outputs=completions, finished=group.finished,
            num_cached_tokens=first.num_cached_prompt_tokens, metrics=group.metrics())

    def _advance_sequence(self, seq: SequenceState, new_tokens: list[int]) -> CompletionOutput:
        kept, hit = seq.push(new_tokens)
        if hit is not None:
            self._stop_at(seq, hit, num_dropped=len(new_tokens) - len(kept))
        if seq.finish_reason is None and seq.request.status.finished:
            seq.mark_finished()
        return seq.completion(kept)

    def _stop_at(self, seq: SequenceState, hit: tuple[int, str], num_dropped: int) -> None:
        """A stop string matched: cut the text, drop later tokens, end the request."""
        request = seq.request
        seq.apply_stop(hit)
        if not request.status.finished:
            self.scheduler.finish_request(request.request_id, RequestStatus.FINISHED_STOPPED)
        request.status = RequestStatus.FINISHED_STOPPED
        if num_dropped:
            del request.token_ids[-num_dropped:]
            del seq.logprobs[request.num_output_tokens:]
            self.num_generated_tokens -= num_dropped

    # ---- introspection -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        cache_stats = self.kv.prefix_cache_stats
        return {
            "kv_blocks_total": self.m.num_blocks,
            "kv_blocks_in_use": self.kv.num_used_blocks,
            "kv_blocks_free": self.kv.num_free_blocks,
            "prefix_cache_queries": cache_stats.queries,
            "prefix_cache_hit_tokens": cache_stats.hits,
            "num_steps": self.num_steps,
            "num_generated_tokens": self.num_generated_tokens,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            **(self.runner.spec.stats_dict() if self.runner.spec is not None else {}),
        }

    def check_integrity(self) -> None:
        self.kv.check_integrity()


def set_threads(num_threads: int | None) -> None:
    if num_threads:
        torch.set_num_threads(num_threads)
