"""Iteration-level scheduler: which requests run this step, with how many tokens.

One rule covers prefill, chunked prefill, decode, prefix hits and speculation: each request's
``num_computed_tokens`` catches up with its ``num_tokens`` (plus draft tokens) within the step's
token budget. Running requests go first (oldest first), then waiting ones join while budget, slots
and KV blocks last. When blocks run out, the youngest running request is preempted: its blocks are
freed and it recomputes later from the front of the waiting queue, so the oldest always progress
and nothing starves or deadlocks. A request that cannot fit even alone is finished, never retried
forever.
"""

from __future__ import annotations

from collections import deque

from specserve.config import SchedulerConfig
from specserve.core.kv_cache_manager import KVCacheManager
from specserve.core.outputs import RequestStepResult, ScheduledRequest, SchedulerOutput
from specserve.request import Request, RequestStatus


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache_manager: KVCacheManager) -> None:
        self.config = config
        self.kv = kv_cache_manager
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self._finished_since_last_step: list[str] = []
        self.num_preemptions = 0

    # ---- request lifecycle -------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> Request | None:
        """End a request (abort, stop string, error); its blocks return to the pool at once."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        request.status = status
        request.spec_token_ids = []
        self.kv.free(request_id)
        self._finished_since_last_step.append(request_id)
        return request

    @property
    def num_unfinished(self) -> int:
        return len(self.requests)

    # ---- scheduling --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        num_preempted = 0

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            spec = request.spec_token_ids if request.num_tokens - request.num_computed_tokens == 1 else []
            if len(spec) + num_new > budget:
                spec = []
            while True:
                if self.kv.allocate_slots(request.request_id, request.num_computed_tokens,
                                          num_new + len(spec)) is not None:
                    break
                if spec:  # drop the drafts before hurting anyone else
                    spec = []
                    continue
                victim = self.running[-1]
                self._preempt(victim)
                num_preempted += 1
                if victim is request:
                    break
            if request.status != RequestStatus.RUNNING:
                break  # it preempted itself: everything younger is gone too
            if not spec:
                request.spec_token_ids = []
            scheduled.append(self._scheduled(request, num_new, spec))
            budget -= num_new + len(spec)
            index += 1

        while (self.waiting and budget > 0 and num_preempted == 0
               and len(self.running) < self.config.max_num_seqs):
            request = self.waiting[0]
            hit_blocks, num_hit = self.kv.get_computed_blocks(request.token_ids)
            num_new = min(request.num_tokens - num_hit, budget)
            if self.kv.allocate_slots(request.request_id, num_hit, num_new, hit_blocks) is None:
                if not self.running:
                    # Nothing left to free: this request cannot fit in the KV pool even alone.
                    status = (RequestStatus.FINISHED_LENGTH if request.num_output_tokens
                              else RequestStatus.FINISHED_ERROR)
                    request.stop_reason = "KV cache too small for this request"
                    self.finish_request(request.request_id, status)
                    continue
                break
            self.waiting.popleft()
            if request.status == RequestStatus.WAITING:
                request.num_cached_prompt_tokens = num_hit
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit
            self.running.append(request)
            scheduled.append(self._scheduled(request, num_new, []))
            budget -= num_new

        finished = self._finished_since_last_step
        self._finished_since_last_step = []
        return SchedulerOutput(
            scheduled=scheduled,
            num_batched_tokens=self.config.max_num_batched_tokens - budget,
            block_copies=self.kv.pop_pending_copies(),
            finished_request_ids=finished,
            num_preempted=num_preempted,
        )

    def _scheduled(self, request: Request, num_new: int, spec: list[int]) -> ScheduledRequest:
        return ScheduledRequest(
            request=request,
            num_computed_tokens=request.num_computed_tokens,
            num_new_tokens=num_new,
            block_ids=list(self.kv.get_block_ids(request.request_id)),
            spec_token_ids=list(spec),
            spec_parents=list(request.spec_parents) if spec else [],
        )

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.kv.free(request.request_id)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # ---- results -----------------------------------------------------------------------------
    def update_from_output(self, output: SchedulerOutput,
                           results: dict[str, RequestStepResult]) -> list[tuple[Request, list[int]]]:
        """Advance counters, append sampled tokens, finish requests. Returns (request, new tokens)."""
        updates: list[tuple[Request, list[int]]] = []
        for item in output.scheduled:
            request = item.request
            if request.status != RequestStatus.RUNNING:
                continue  # finished or preempted since it was scheduled
            result = results.get(request.request_id)
            num_accepted = result.num_accepted_draft_tokens if result else 0
            request.num_computed_tokens += item.num_new_tokens + num_accepted
            new_tokens: list[int] = []
            status: RequestStatus | None = None
            if result is not None:
                for token_id in result.token_ids:
                    new_tokens.append(token_id)
                    status = request.append_output(token_id)
                    if status is not None:
                        break
                if status is None and request.num_tokens >= request.max_model_len:
                    status = RequestStatus.FINISHED_LENGTH
            if item.spec_token_ids:
                self.kv.truncate(request.request_id, request.num_computed_tokens)
                spec = request.spec
                spec.num_steps += 1
                spec.num_proposed_tokens += len(item.spec_token_ids)
                spec.num_accepted_tokens += num_accepted
                spec.num_emitted_tokens += len(new_tokens)
            if result is not None:
                request.spec_token_ids = result.next_spec_token_ids
                request.spec_parents = result.next_spec_parents
            if status is not None:
                self.finish_request(request.request_id, status)
            else:
                self.kv.cache_full_blocks(request.request_id, request.token_ids,
                                          request.num_computed_tokens)
            if new_tokens or status is not None:
                updates.append((request, new_tokens))
        return updates
