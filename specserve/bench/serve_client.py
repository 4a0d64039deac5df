"""The load generator of ``bench serve``: streaming chat requests over HTTP, timed on the client side.

One point of the curve sends requests either as a Poisson process (``rate`` requests/s, exponential
gaps from a seeded generator, on an absolute schedule so that slow sends do not lower the rate) or from
``concurrency`` clients that each send the next request when their last one ends. A point stops after
``num_requests`` requests or ``duration_s`` seconds, whichever comes first; requests still running at
the deadline are cancelled (the server aborts them) and counted as unfinished, not as results.

Per request: TTFT (send -> first content chunk), ITL (gaps between content chunks, vLLM's convention: a
chunk may carry several tokens under speculation), TPOT ((e2e - TTFT) / (tokens - 1), tokens from the
usage the server reports), e2e latency.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from specserve.bench.common import chat_messages
from specserve.bench.engine_runs import percentile


@dataclass
class RequestRecord:
    ok: bool
    start_s: float  # from the start of the point
    e2e_s: float = 0.0
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)


@dataclass(frozen=True)
class LoadSpec:
    url: str  # server root, e.g. http://127.0.0.1:8000
    model: str
    max_tokens: int
    num_requests: int
    duration_s: float
    rate: float | None = None  # requests/s (inf: all at once); None = fixed concurrency
    concurrency: int | None = None
    seed: int = 0
    api_key: str | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise ValueError("give exactly one of rate and concurrency")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")


async def send_one(client: httpx.AsyncClient, load: LoadSpec, index: int, t0: float) -> RequestRecord:
    body = {"model": load.model, "messages": chat_messages(index, distinct=True), "max_tokens": load.max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {load.api_key}"} if load.api_key else {}
    start = time.perf_counter()
    record = RequestRecord(ok=False, start_s=start - t0)
    last = start
    try:
        async with client.stream("POST", f"{load.url}/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return record
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: "):]
                if payload == "[DONE]":
                    record.ok = record.error is None
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    record.error = str(chunk["error"])[:200]
                if chunk.get("usage"):
                    record.completion_tokens = int(chunk["usage"]["completion_tokens"])
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    if record.ttft_s is None:
                        record.ttft_s = now - start
                    else:
                        record.itl_s.append(now - last)
                    last = now
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    record.e2e_s = time.perf_counter() - start
    return record


async def run_load(load: LoadSpec, on_done: Any = None) -> tuple[list[RequestRecord], int, float]:
    """Returns (finished records, unfinished count, seconds from the first send to the last result)."""
    records: list[RequestRecord] = []
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(None, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        t0 = time.perf_counter()
        deadline = t0 + load.duration_s

        async def tracked(index: int) -> None:
            record = await send_one(client, load, index, t0)
            records.append(record)
            if on_done is not None:
                on_done(record)

        tasks: list[asyncio.Task[None]] = []
        if load.rate is not None:
            rng = random.Random(load.seed)
            next_send = t0
            for index in range(load.num_requests):
                delay = next_send - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.perf_counter() >= deadline:
                    break
                tasks.append(asyncio.create_task(tracked(index)))
                if not math.isinf(load.rate):
                    next_send += rng.expovariate(load.rate)
        else:
            counter = itertools.count()

            async def client_loop() -> None:
                while (index := next(counter)) < load.num_requests and time.perf_counter() < deadline:
                    await tracked(index)

            tasks = [asyncio.create_task(client_loop()) for _ in range(load.concurrency or 1)]
        remaining = max(deadline - time.perf_counter(), 0.0)
        _, pending = await asyncio.wait(tasks, timeout=remaining) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        end = max((t0 + r.start_s + r.e2e_s for r in records), default=t0)
    # A pending task is one request in flight (rate: the request; concurrency: a client's current one).
    return records, len(pending), end - t0


def summarize(records: list[RequestRecord], unfinished: int, seconds: float) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [g for r in ok for g in r.itl_s]
    tpot = [t for r in ok if (t := r.tpot_s) is not None]
    e2e = [r.e2e_s for r in ok]
    tokens = sum(r.completion_tokens for r in ok)
    seconds = max(seconds, 1e-9)
    return {
        "completed": len(ok), "failed": len(records) - len(ok), "unfinished": unfinished,
        "seconds": seconds, "output_tok_s": tokens / seconds, "req_s": len(ok) / seconds,
        "ttft_ms_p50": 1e3 * percentile(ttft, 50), "ttft_ms_p99": 1e3 * percentile(ttft, 99),
        "itl_ms_p50": 1e3 * percentile(itl, 50), "itl_ms_p99": 1e3 * percentile(itl, 99),
        "tpot_ms_p50": 1e3 * percentile(tpot, 50), "tpot_ms_p99": 1e3 * percentile(tpot, 99),
        "e2e_s_p50": percentile(e2e, 50), "e2e_s_p99": percentile(e2e, 99),
    }


def first_error(records: list[RequestRecord]) -> str | None:
    return next((r.error for r in records if r.error), None)
