"""OpenAI request schemas (pydantic) and their translation into SamplingParams.

Models are strict: a string where a number belongs is a client error, not something to coerce.
Unknown fields are kept (``extra="allow"``) so that the few we refuse to ignore silently
(tools, logit_bias, ...) can be named in the error.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from specserve.sampling_params import MAX_LOGPROBS, SamplingParams
from specserve.server.errors import APIError

# A bound on n (and on the number of prompts) so one request cannot occupy the whole engine.
MAX_N = 16
MAX_PROMPTS = 64
# Fields of the OpenAI API that change the output in ways we do not implement.
UNSUPPORTED_FIELDS = ("tools", "functions", "tool_choice", "function_call", "logit_bias", "response_format",
                      "suffix", "best_of")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def to_template(self) -> dict[str, str]:
        """The {"role", "content"} dict chat templates expect; "developer" is OpenAI's new "system"."""
        if isinstance(self.content, list):
            content = "".join(part.text for part in self.content)
        else:
            content = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class SamplingRequest(_Strict):
    """Fields shared by chat and completions: the ones that become SamplingParams."""

    model: str
    n: int = Field(1, le=MAX_N)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # extension (vLLM)
    min_p: float | None = None  # extension (vLLM)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None  # extension (vLLM)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None  # extension (vLLM)
    min_tokens: int | None = None  # extension (vLLM)
    ignore_eos: bool | None = None  # extension (vLLM)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    PASSTHROUGH: ClassVar[tuple[str, ...]] = (
        "n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
        "repetition_penalty", "seed", "stop", "stop_token_ids", "min_tokens", "ignore_eos")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check_supported(self) -> None:
        for name in UNSUPPORTED_FIELDS:
            if (self.model_extra or {}).get(name) is not None:
                raise APIError(400, f"'{name}' is not supported by this server", param=name)
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed when stream is true", param="stream_options")

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "logprobs": logprobs}
        for name in self.PASSTHROUGH:
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        try:
            return SamplingParams(**kwargs)
        except ValueError as exc:
            raise APIError(400, str(exc), param=_param_of(str(exc), kwargs)) from exc


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    def to_sampling_params(self) -> SamplingParams:
        self.check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {self.top_logprobs}",
                           param="top_logprobs")
        # max_completion_tokens is the newer name; when both are given it wins, as in OpenAI's API.
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return self.sampling_params(max_tokens, logprobs)

    def template_messages(self) -> list[dict[str, str]]:
        return [m.to_template() for m in self.messages]


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # the legacy API's default
    logprobs: int | None = None
    echo: bool = False

    def to_sampling_params(self) -> SamplingParams:
        self.check_supported()
        if self.echo:
            raise APIError(400, "echo is not supported by this server", param="echo")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise APIError(400, f"logprobs must be in [0, {MAX_LOGPROBS}], got {self.logprobs}",
                           param="logprobs")
        return self.sampling_params(self.max_tokens, self.logprobs)

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts (a string, or token ids)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            prompts: list[str | list[int]] = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]  # type: ignore[list-item]
        else:
            prompts = list(prompt)  # type: ignore[arg-type]
        if not prompts or any(len(p) == 0 for p in prompts):
            raise APIError(400, "prompt must not be empty", param="prompt")
        if len(prompts) > MAX_PROMPTS:
            raise APIError(400, f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}",
                           param="prompt")
        return prompts


def _param_of(message: str, fields: dict[str, Any]) -> str | None:
    """SamplingParams messages start with the field's name; report it as the error's param."""
    match = re.match(r"(\w+)", message)
    return match.group(1) if match and match.group(1) in fields else None
