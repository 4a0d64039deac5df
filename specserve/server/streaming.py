"""Delivery of a Generation: SSE streams and plain responses, both tied to the client's connection.

A client that goes away must abort its request at once so its KV blocks return to the pool:
- streaming: Starlette cancels the body iterator when it sees ``http.disconnect``; we also close the
  iterator ourselves, because a cancel that lands during ``send`` leaves it suspended at a yield;
- non-streaming: Starlette does not watch the connection, so we race the work against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from specserve.engine.async_engine import EngineDeadError
from specserve.server.errors import APIError
from specserve.server.generation import Generation, sse
from specserve.server.state import ServerState

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client left before its non-streaming response was ready; there is no one to answer."""


class SSEResponse(StreamingResponse):
    """An event stream that runs ``on_close`` however it ends (done, error, or client gone)."""

    def __init__(self, chunks: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(_with_error_events(chunks), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._chunks = chunks
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                for iterator in (self.body_iterator, self._chunks):
                    aclose = getattr(iterator, "aclose", None)
                    if aclose is not None:
                        await aclose()
            finally:
                self._on_close()


async def _with_error_events(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once the 200 header is out, a failure can only be reported as an event in the stream."""
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
        error = as_api_error(exc)
        yield sse(error.body())
        yield sse("[DONE]")


def as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), code="engine_dead")
    if isinstance(exc, ValueError):  # the engine refused the request when it was queued
        return APIError(400, str(exc))
    logger.exception("request failed", exc_info=exc)
    return APIError(500, "internal server error", type="server_error")


async def generate_to_end(state: ServerState, gen: Generation, request: Request) -> None:
    """Run a non-streaming request to its end; engine refusals become API errors."""
    try:
        await run_unless_disconnected(request, gen.run_to_end())
    except (ValueError, EngineDeadError) as exc:
        raise as_api_error(exc) from exc
    finally:
        state.release(gen.request_id)
    gen.check_errors()


async def run_unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (aborting the request)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
    if not task.done() or task.cancelled():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone()
    return task.result()


async def _wait_for_disconnect(request: Request) -> None:
    # The body has been read already, so the next message can only be the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
