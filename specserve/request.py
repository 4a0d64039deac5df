"""A request as the scheduler sees it: token ids, progress counters and status. No tensors.

Counters (the one rule that replaces prefill/decode phases):
- ``num_tokens``: prompt + output tokens known so far.
- ``num_computed_tokens``: tokens whose K/V is in the cache. Each step the scheduler lets it catch
  up with ``num_tokens + len(spec_token_ids)`` within the token budget. When it reaches the end,
  the model samples the next token(s). A preempted request drops back to zero and recomputes.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from specserve.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
             RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR}


@dataclass(slots=True)
class SpecMetrics:
    """Per-request speculation counters (bonus token counted in ``num_emitted_tokens``)."""

    num_steps: int = 0
    num_proposed_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0


@dataclass(slots=True)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_token_ids: frozenset[int]
    max_model_len: int
    arrival_time: float = field(default_factory=time.monotonic)
    token_ids: list[int] = field(default_factory=list)  # prompt + output
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prefix-cache hits at first schedule
    spec_token_ids: list[int] = field(default_factory=list)  # draft tokens to verify next step
    spec_parents: list[int] = field(default_factory=list)  # tree parent of each draft (-1 = root)
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    first_token_time: float | None = None
    spec: SpecMetrics = field(default_factory=SpecMetrics)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def max_output_tokens(self) -> int:
        """How many tokens this request may still produce in total (max_tokens and context limit)."""
        limit = self.max_model_len - self.num_prompt_tokens
        if self.params.max_tokens is not None:
            limit = min(limit, self.params.max_tokens)
        return limit

    def append_output(self, token_id: int) -> RequestStatus | None:
        """Append one sampled token; return the finishing status if it ends the request."""
        self.token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
        num_out = self.num_output_tokens
        if num_out >= self.params.min_tokens:
            if not self.params.ignore_eos and token_id in self.eos_token_ids:
                self.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if self.params.stop_token_ids and token_id in self.params.stop_token_ids:
                self.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if num_out >= self.max_output_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None
