"""POST /v1/completions: one or more prompts (text or token ids) -> Generation -> text_completion."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from specserve.server.generation import ChoiceDelta, Generation, prepare_prompt, safe_logprob, sse
from specserve.server.protocol import CompletionRequest
from specserve.server.state import ServerState
from specserve.server.streaming import SSEResponse, generate_to_end


async def create_completion(state: ServerState, body: CompletionRequest, raw: Request) -> Response:
    state.check_model(body.model)
    params = body.to_sampling_params()
    prompts = [prepare_prompt(state, prompt, "prompt") for prompt in body.prompts()]
    gen = Generation(state, f"cmpl-{uuid.uuid4().hex}", "completions", prompts, params)
    state.admit(gen.request_id, gen.engine_request_ids, gen.num_seqs)
    created = int(time.time())
    if body.stream:
        return SSEResponse(_chunks(state, gen, body, created), on_close=lambda: state.release(gen.request_id))
    await generate_to_end(state, gen, raw)
    return JSONResponse(_response(state, gen, body, created))


def _response(state: ServerState, gen: Generation, body: CompletionRequest, created: int) -> dict[str, Any]:
    choices = []
    for prompt_index, output in sorted(gen.final.items()):
        for completion in output.outputs:
            logprobs = None
            if body.logprobs is not None:
                logprobs = _logprobs(state, completion.logprobs or [], 0)
            choices.append({"index": prompt_index * gen.params.n + completion.index, "text": completion.text,
                            "logprobs": logprobs, "finish_reason": completion.finish_reason})
    return gen.response("text_completion", created, body.model, choices)


async def _chunks(state: ServerState, gen: Generation, body: CompletionRequest,
                  created: int) -> AsyncIterator[str]:
    base = {"id": gen.request_id, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": None}
    text_offsets: dict[int, int] = {}  # chars of text sent per choice, for logprobs.text_offset
    async with contextlib.aclosing(gen.run()) as events:
        async for output, deltas in events:
            for delta in deltas:
                chunk = {**base, "choices": [_choice(state, delta, body, text_offsets)]}
                if delta.finish_reason is not None and output.finished:
                    chunk["specserve"] = gen.spec_info([output])
                yield sse(chunk)
    if body.include_usage:
        yield sse({**base, "choices": [], "usage": gen.usage(), "specserve": gen.spec_info()})
    yield sse("[DONE]")


def _choice(state: ServerState, delta: ChoiceDelta, body: CompletionRequest,
            text_offsets: dict[int, int]) -> dict[str, Any]:
    logprobs = None
    offset = text_offsets.get(delta.index, 0)
    if body.logprobs is not None and delta.logprobs:
        logprobs = _logprobs(state, delta.logprobs, offset)
    text_offsets[delta.index] = offset + len(delta.text)
    return {"index": delta.index, "text": delta.text, "logprobs": logprobs,
            "finish_reason": delta.finish_reason}


def _logprobs(state: ServerState, logprobs: list[Any], offset: int) -> dict[str, Any]:
    """The legacy layout: parallel lists, and per token a {text: logprob} map of the alternatives."""
    tokens, token_logprobs, top, text_offset = [], [], [], []
    for lp in logprobs:
        text = state.token_text(lp.token_id)
        tokens.append(text)
        token_logprobs.append(safe_logprob(lp.logprob))
        alternatives = {text: safe_logprob(lp.logprob)}  # the sampled token is always listed, as in OpenAI
        for token_id, value in zip(lp.top_token_ids, lp.top_logprobs):
            alternatives.setdefault(state.token_text(token_id), safe_logprob(value))
        top.append(alternatives)
        text_offset.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
            "text_offset": text_offset}
