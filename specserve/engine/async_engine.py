"""The online engine: one background thread runs the step loop; asyncio callers stream outputs.

Callers never touch the LLMEngine directly: add and abort go through a command queue that the loop
drains before each step, so the engine is only ever used from its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from specserve.engine.engine import LLMEngine, PromptInput
from specserve.outputs import RequestOutput
from specserve.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _streams
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="specserve-engine", daemon=True)
        self._thread.start()

    # ---- public API --------------------------------------------------------------------------
    async def generate(self, prompt: PromptInput, params: SamplingParams,
                       request_id: str) -> AsyncIterator[RequestOutput]:
        """Stream outputs of one request; aborts it if the consumer stops iterating early."""
        if self.error is not None:
            raise EngineDeadError(f"engine stopped: {self.error}")
        # Validate here so bad input raises in the caller, before anything is queued.
        _, ids = self.engine.tokenize_prompt(prompt)
        self.engine.validate_prompt(ids)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._streams:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        self._send("add", (request_id, {"prompt_token_ids": ids, "prompt": prompt if isinstance(prompt, str)
                                        else None}, params))
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(request_id)
            with self._lock:
                self._streams.pop(request_id, None)

    def abort(self, request_id: str) -> None:
        self._send("abort", request_id)

    def stats(self) -> dict[str, Any]:
        return dict(self._stats_snapshot)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._streams)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    # ---- the loop thread ---------------------------------------------------------------------
    _stats_snapshot: dict[str, Any] = {}

    def _send(self, kind: str, payload: Any) -> None:
        self._commands.put((kind, payload))
        self._wake.set()

    def _drain_commands(self) -> None:
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                request_id, prompt, params = payload
                with self._lock:
                    stream = self._streams.get(request_id)
                if stream is None:
                    continue  # the caller went away before the engine saw it
                try:
                    self.engine.add_request(request_id, prompt, params)
                except ValueError as exc:
                    stream.put(exc)
            elif kind == "abort":
                self.engine.abort_request(payload)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_commands()
                if not self.engine.has_unfinished_requests():
                    self._stats_snapshot = self.engine.stats()
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                for output in self.engine.step():
                    with self._lock:
                        stream = self._streams.get(output.request_id)
                    if stream is not None:
                        stream.put(output)
                self._stats_snapshot = self.engine.stats()
        except BaseException as exc:  # the loop must never die silently
            logger.exception("engine loop crashed")
            self.error = exc
            with self._lock:
                streams = list(self._streams.values())
            for stream in streams:
                stream.put(EngineDeadError(f"engine stopped: {exc}"))
