"""Public results: what LLM.generate returns and the async engine streams."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CompletionOutput:
    index: int
    text: str  # full text so far (a possible stop-string prefix held back while streaming)
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[Any] | None = None  # one TokenLogprobs per token when requested
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | None
    stop_reason: int | str | None = None  # the stop string or stop token id that matched
    delta_text: str = ""  # new text since the previous output of this request
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    metrics: dict[str, Any] = field(default_factory=dict)
