"""Engine-side state of one output sequence: incremental text, stop strings, streaming visibility.

The scheduler owns the ``Request`` (tokens, counters); this owns what the caller sees: the text so far
(cut where a stop string matched), how much of it was already released (a possible stop-string prefix
is held back while streaming), logprobs, and the finish reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from specserve.detokenizer import IncrementalDetokenizer, find_stop, stop_holdback
from specserve.outputs import CompletionOutput
from specserve.request import Request
from specserve.sampling_params import SamplingParams


@dataclass
class SequenceState:
    request: Request
    index: int
    detokenizer: IncrementalDetokenizer
    visible_len: int = 0  # chars of text already released to the caller
    logprobs: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text_limit: int | None = None  # where a matched stop string cut the text

    @property
    def text(self) -> str:
        full = self.detokenizer.text
        return full if self.text_limit is None else full[:self.text_limit]

    @property
    def stops(self) -> list[str]:
        return self.request.params.stop or []

    def push(self, new_tokens: list[int]) -> tuple[list[int], tuple[int, str] | None]:
        """Detokenize new tokens; returns (the tokens kept, a stop-string hit or None).

        With stop strings, tokens go in one at a time so that nothing after the token that completed a
        stop string is kept (under speculation several tokens arrive at once)."""
        if not new_tokens:
            return new_tokens, None
        if not self.stops or self.finish_reason is not None:
            self.detokenizer.push(new_tokens)
            return new_tokens, None
        for count, token_id in enumerate(new_tokens, start=1):
            before = len(self.text)
            self.detokenizer.push([token_id])
            hit = find_stop(self.text, len(self.text) - before, self.stops)
            if hit is not None:
                return new_tokens[:count], hit
        return new_tokens, None

    def apply_stop(self, hit: tuple[int, str]) -> None:
        cut, stop = hit
        self.text_limit = cut + (len(stop) if self.request.params.include_stop_str_in_output else 0)
        self.stop_reason = stop

    def mark_finished(self) -> None:
        self.finish_reason = self.request.status.value
        if self.stop_reason is None:
            self.stop_reason = self.request.stop_reason

    def completion(self, delta_ids: list[int]) -> CompletionOutput:
        text = self.text
        if self.finish_reason is not None:
            visible = len(text)
        else:
            visible = len(text) - stop_holdback(text, self.stops)
        visible = max(visible, self.visible_len)
        delta_text = text[self.visible_len:visible]
        self.visible_len = visible
        logprobs = self.logprobs if self.request.params.logprobs is not None else None
        cumulative = float(sum(lp.logprob for lp in logprobs)) if logprobs else None
        return CompletionOutput(
            index=self.index, text=text[:visible], token_ids=self.request.output_token_ids,
            cumulative_logprob=cumulative, logprobs=logprobs, finish_reason=self.finish_reason,
            stop_reason=self.stop_reason, delta_text=delta_text, delta_token_ids=list(delta_ids))


@dataclass
class RequestGroup:
    """One user request: n sequences sampled from the same prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[SequenceState]
    arrival_time: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)

    def metrics(self) -> dict[str, Any]:
        first = self.sequences[0].request
        spec = first.spec
        ttft = None if first.first_token_time is None else first.first_token_time - first.arrival_time
        return {
            "arrival_time": first.arrival_time,
            "time_to_first_token": ttft,
            "num_preemptions": sum(s.request.num_preemptions for s in self.sequences),
            "spec_steps": spec.num_steps,
            "spec_proposed_tokens": spec.num_proposed_tokens,
            "spec_accepted_tokens": spec.num_accepted_tokens,
            "mean_accepted_tokens_per_step": (spec.num_emitted_tokens / spec.num_steps) if spec.num_steps else None,
        }
