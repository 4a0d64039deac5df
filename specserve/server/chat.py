"""POST /v1/chat/completions: messages -> chat template -> Generation -> chat.completion(.chunk)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from specserve.server.errors import APIError
from specserve.server.generation import ChoiceDelta, Generation, prepare_prompt, safe_logprob, sse
from specserve.server.protocol import ChatCompletionRequest
from specserve.server.state import ServerState
from specserve.server.streaming import SSEResponse, generate_to_end


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, raw: Request) -> Response:
    state.check_model(body.model)
    params = body.to_sampling_params()
    try:
        prompt = state.tokenizer.apply_chat_template(body.template_messages(), add_generation_prompt=True)
    except Exception as exc:  # template errors come from the messages the client sent
        raise APIError(400, f"cannot apply the chat template: {exc}", param="messages") from exc
    ids = prepare_prompt(state, prompt, "messages")
    gen = Generation(state, f"chatcmpl-{uuid.uuid4().hex}", "chat", [ids], params)
    state.admit(gen.request_id, gen.engine_request_ids, gen.num_seqs)
    created = int(time.time())
    if body.stream:
        return SSEResponse(_chunks(state, gen, body, created), on_close=lambda: state.release(gen.request_id))
    await generate_to_end(state, gen, raw)
    return JSONResponse(_response(state, gen, body, created))


def _response(state: ServerState, gen: Generation, body: ChatCompletionRequest,
              created: int) -> dict[str, Any]:
    choices = []
    for output in gen.final.values():
        for completion in output.outputs:
            logprobs = None
            if body.logprobs:
                entries = _logprob_entries(state, completion.logprobs or [], body.top_logprobs or 0)
                logprobs = {"content": entries}
            message = {"role": "assistant", "content": completion.text}
            choices.append({"index": completion.index, "message": message, "logprobs": logprobs,
                            "finish_reason": completion.finish_reason})
    return gen.response("chat.completion", created, body.model, choices)


async def _chunks(state: ServerState, gen: Generation, body: ChatCompletionRequest,
                  created: int) -> AsyncIterator[str]:
    base = {"id": gen.request_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
            "system_fingerprint": None}
    for index in range(gen.params.n):
        role = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}
        yield sse({**base, "choices": [role]})
    async with contextlib.aclosing(gen.run()) as events:
        async for output, deltas in events:
            for delta in deltas:
                chunk = {**base, "choices": [_choice(state, delta, body)]}
                if delta.finish_reason is not None and output.finished:
                    chunk["specserve"] = gen.spec_info()  # the chat page shows this under the reply
                yield sse(chunk)
    if body.include_usage:
        yield sse({**base, "choices": [], "usage": gen.usage(), "specserve": gen.spec_info()})
    yield sse("[DONE]")


def _choice(state: ServerState, delta: ChoiceDelta, body: ChatCompletionRequest) -> dict[str, Any]:
    logprobs = None
    if body.logprobs and delta.logprobs:
        logprobs = {"content": _logprob_entries(state, delta.logprobs, body.top_logprobs or 0)}
    return {"index": delta.index, "delta": {"content": delta.text} if delta.text else {},
            "logprobs": logprobs, "finish_reason": delta.finish_reason}


def _logprob_entries(state: ServerState, logprobs: list[Any], num_top: int) -> list[dict[str, Any]]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = state.token_text(token_id)
        return {"token": text, "logprob": safe_logprob(logprob), "bytes": list(text.encode())}

    return [{**entry(lp.token_id, lp.logprob),
             "top_logprobs": [entry(t, v) for t, v in zip(lp.top_token_ids[:num_top], lp.top_logprobs)]}
            for lp in logprobs]
