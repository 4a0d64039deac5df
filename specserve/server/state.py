"""What the HTTP layer knows about the server: the engine, its limits, and requests in flight.

Admission: a request is counted from the moment it is accepted until its response ends (or its
client leaves). Waiting requests are estimated as in-flight sequences beyond what the engine runs at
once; the engine's own waiting count lags by a step, so the larger of the two is used.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from specserve.engine.async_engine import AsyncLLMEngine
from specserve.server.errors import APIError
from specserve.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class InFlight(NamedTuple):
    engine_request_ids: list[str]  # one per prompt
    num_seqs: int  # n x prompts


@dataclass
class ServerState:
    engine: AsyncLLMEngine
    model_name: str
    max_num_seqs: int
    max_queue: int | None = None  # None = unbounded
    api_key: str | None = None
    speculator: str | None = None  # accepted now; speculation lands later
    model_aliases: frozenset[str] = frozenset()  # other names clients may use (e.g. the --model path)
    created: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    in_flight: dict[str, InFlight] = field(default_factory=dict)  # by the response's id
    metrics: ServerMetrics = field(init=False)
    _token_text: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.engine.stats, self.server_gauges)

    @property
    def max_model_len(self) -> int:
        return int(self.engine.engine.max_model_len)

    @property
    def tokenizer(self) -> Any:
        return self.engine.engine.tokenizer

    def check_model(self, name: str) -> None:
        if name != self.model_name and name not in self.model_aliases:
            raise APIError(404, f"model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")

    # ---- admission ---------------------------------------------------------------------------
    @property
    def num_in_flight(self) -> int:
        return sum(entry.num_seqs for entry in self.in_flight.values())

    def num_waiting(self) -> int:
        engine_waiting = int(self.engine.stats().get("num_waiting", 0))
        return max(engine_waiting, self.num_in_flight - self.max_num_seqs)

    def admit(self, request_id: str, engine_request_ids: list[str], num_seqs: int) -> None:
        """Count a request in, or refuse it: 503 while draining or dead, 429 when the queue is full."""
        if self.draining:
            raise APIError(503, "server is shutting down", code="shutting_down")
        if not self.engine.is_running:
            raise APIError(503, "engine is not running", code="engine_dead")
        if self.max_queue is not None:
            waiting_after = max(self.num_waiting(), self.num_in_flight + num_seqs - self.max_num_seqs)
            if waiting_after > self.max_queue:
                raise APIError(429, f"too many requests waiting (limit {self.max_queue}); retry shortly",
                               code="queue_full", headers={"Retry-After": "1"})
        self.in_flight[request_id] = InFlight(engine_request_ids, num_seqs)

    def release(self, request_id: str) -> None:
        self.in_flight.pop(request_id, None)

    def abort_all(self) -> None:
        for request_id, entry in list(self.in_flight.items()):
            logger.warning("aborting %s", request_id)
            for engine_request_id in entry.engine_request_ids:
                self.engine.abort(engine_request_id)

    def server_gauges(self) -> dict[str, float]:
        return {"server_requests_in_flight": self.num_in_flight, "server_draining": float(self.draining)}

    # ---- text of single tokens, for logprobs -------------------------------------------------
    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text
