"""One API request on the engine: prompts in, per-choice deltas out, plus timing and usage.

Chat and completions differ only in how they dress the deltas, so both drive a ``Generation``.
Choice ``index`` = prompt_index * n + the engine's sequence index (OpenAI's layout for batches).
Cancelling the consumer (client gone) cancels every engine stream, which aborts its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from specserve.outputs import RequestOutput
from specserve.sampling_params import SamplingParams
from specserve.server.errors import APIError
from specserve.server.state import ServerState

T = TypeVar("T")


@dataclass(slots=True)
class ChoiceDelta:
    index: int
    text: str  # new text since the previous delta of this choice
    logprobs: list[Any]  # TokenLogprobs of the new tokens (empty when not requested)
    finish_reason: str | None  # set on the one delta that ends this choice


def prepare_prompt(state: ServerState, prompt: str | list[int], param: str) -> list[int]:
    """Tokenize and check a prompt here, so a bad one is a 400 before anything is queued."""
    engine = state.engine.engine
    try:
        _, ids = engine.tokenize_prompt(prompt)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param) from exc
    if len(ids) >= state.max_model_len:
        raise APIError(400, f"the prompt has {len(ids)} tokens but this model's context length is "
                            f"{state.max_model_len} (at least one token must be left to generate)",
                       param=param, code="context_length_exceeded")
    try:
        engine.validate_prompt(ids)
    except ValueError as exc:
        raise APIError(400, str(exc), param=param) from exc
    return ids


@dataclass
class Generation:
    state: ServerState
    request_id: str
    endpoint: str
    prompts: list[list[int]]
    params: SamplingParams
    start: float = field(default_factory=time.perf_counter)
    final: dict[int, RequestOutput] = field(default_factory=dict)  # by prompt index, once finished
    _num_tokens_seen: dict[int, int] = field(default_factory=dict)
    _finished_choices: set[int] = field(default_factory=set)
    _last_token_time: float | None = None

    @property
    def engine_request_ids(self) -> list[str]:
        if len(self.prompts) == 1:
            return [self.request_id]
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

    @property
    def num_seqs(self) -> int:
        return len(self.prompts) * self.params.n

    async def run(self) -> AsyncGenerator[tuple[RequestOutput, list[ChoiceDelta]], None]:
        """Yield each engine output with the choice deltas it carries."""
        engine = self.state.engine
        streams = [engine.generate(ids, self.params, request_id)
                   for ids, request_id in zip(self.prompts, self.engine_request_ids)]
        # aclosing: a consumer that stops early must reach the engine streams' cleanup (abort) now.
        async with contextlib.aclosing(_merge(streams)) as merged:
            async for prompt_index, output in merged:
                yield output, self._deltas(prompt_index, output)
        self.state.metrics.e2e.observe(time.perf_counter() - self.start)

    async def run_to_end(self) -> None:
        async with contextlib.aclosing(self.run()) as events:
            async for _ in events:
                pass

    def _deltas(self, prompt_index: int, output: RequestOutput) -> list[ChoiceDelta]:
        metrics = self.state.metrics
        deltas, num_new_tokens = [], 0
        for completion in output.outputs:
            index = prompt_index * self.params.n + completion.index
            seen = self._num_tokens_seen.get(index, 0)
            num_tokens = len(completion.token_ids)
            num_new_tokens += max(num_tokens - seen, 0)
            new_logprobs = list(completion.logprobs[seen:num_tokens]) if completion.logprobs else []
            self._num_tokens_seen[index] = max(num_tokens, seen)
            finish = None
            if completion.finish_reason is not None and index not in self._finished_choices:
                finish = completion.finish_reason
                self._finished_choices.add(index)
                metrics.finished.labels(finish_reason=finish).inc()
            if completion.delta_text or new_logprobs or finish:
                deltas.append(ChoiceDelta(index, completion.delta_text, new_logprobs, finish))
        now = time.perf_counter()
        if num_new_tokens:
            if self._last_token_time is None:
                metrics.ttft.observe(now - self.start)
            else:
                # With speculation one step brings several tokens; spread the gap over them.
                gap = (now - self._last_token_time) / num_new_tokens
                for _ in range(num_new_tokens):
                    metrics.itl.observe(gap)
            self._last_token_time = now
            metrics.generation_tokens.inc(num_new_tokens)
        if output.finished:
            self.final[prompt_index] = output
            metrics.prompt_tokens.inc(len(output.prompt_token_ids))
        return deltas

    # ---- summaries ---------------------------------------------------------------------------
    def response(self, kind: str, created: int, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole (non-streamed) reply of kind ``chat.completion`` or ``text_completion``."""
        return {"id": self.request_id, "object": kind, "created": created, "model": model,
                "choices": choices, "usage": self.usage(), "system_fingerprint": None,
                "specserve": self.spec_info()}

    def usage(self) -> dict[str, Any]:
        prompt = sum(len(out.prompt_token_ids) for out in self.final.values())
        completion = sum(len(c.token_ids) for out in self.final.values() for c in out.outputs)
        cached = sum(out.num_cached_tokens for out in self.final.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}

    def spec_info(self, outputs: list[RequestOutput] | None = None) -> dict[str, Any]:
        """The non-standard ``specserve`` field: speculation summary and timing of this reply."""
        outputs = list(self.final.values()) if outputs is None else outputs
        steps = proposed = accepted = 0
        emitted = 0.0
        for out in outputs:
            m = out.metrics
            num_steps = m.get("spec_steps") or 0
            steps += num_steps
            proposed += m.get("spec_proposed_tokens") or 0
            accepted += m.get("spec_accepted_tokens") or 0
            emitted += (m.get("mean_accepted_tokens_per_step") or 0.0) * num_steps
        return {
            "speculator": self.state.speculator,
            "mean_accepted_tokens_per_step": emitted / steps if steps else None,
            "acceptance_rate": accepted / proposed if proposed else None,
            "spec_steps": steps,
            "elapsed_s": round(time.perf_counter() - self.start, 4),
        }

    def check_errors(self) -> None:
        for out in self.final.values():
            if any(c.finish_reason == "error" for c in out.outputs):
                raise APIError(500, "the model failed while generating this request", type="server_error")


async def _merge(streams: list[AsyncIterator[T]]) -> AsyncGenerator[tuple[int, T], None]:
    """Interleave several async iterators, tagging items with their position."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as stream:  # type: ignore[type-var]
            async for item in stream:
                yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: AsyncIterator[T]) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item))
            queue.put_nowait((index, done))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            queue.put_nowait((index, exc))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        # Cancelling a pump raises inside its engine stream, whose cleanup aborts the request.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n"


def safe_logprob(value: float) -> float:
    # JSON has no -inf; OpenAI reports impossible tokens as -9999.0.
    return max(float(value), -9999.0)
