"""A real server on 127.0.0.1 in a thread of the test process, around an engine built for one test module.

The weights are loaded once per session (a ModelBundle, see conftest.py) and shared: each module builds
its own engine (its own KV cache and limits) and app around them. Only one engine runs at a time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from specserve.engine.async_engine import AsyncLLMEngine
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import ModelBundle
from specserve.server.api import create_app
from specserve.server.serve import DrainingServer
from specserve.server.state import ServerState

MODEL_NAME = "smollm2-test"


@dataclass
class RunningServer:
    url: str
    state: ServerState
    server: DrainingServer
    thread: threading.Thread

    @property
    def engine(self) -> AsyncLLMEngine:
        return self.state.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.engine.shutdown()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the engine loop before its next step, so requests stay queued however fast the model is."""
        engine = self.engine.engine
        resume = threading.Event()
        step = engine.step

        def held_step() -> Any:
            resume.wait(30)
            return step()

        engine.step = held_step
        try:
            yield
        finally:
            del engine.step  # back to the class's method
            resume.set()

    def wait_idle(self, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until no request is in flight and no KV block is held; return the engine stats."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.engine.stats()
            idle = stats.get("kv_blocks_in_use") == 0 and stats.get("num_running") == 0
            if (idle and not self.state.in_flight) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def start_server(bundle: ModelBundle, *, kv_cache_memory: str = "64MiB", max_num_seqs: int = 8,
                 max_queue: int | None = None, api_key: str | None = None, max_model_len: int | None = None,
                 drain_timeout: float = 10.0, speculator: str | None = None) -> RunningServer:
    config = build_engine_config(kv_cache_memory=kv_cache_memory, max_num_seqs=max_num_seqs,
                                 max_model_len=max_model_len, speculator=speculator)
    engine = AsyncLLMEngine(LLMEngine(config, bundle))
    state = ServerState(engine, MODEL_NAME, max_num_seqs=max_num_seqs, max_queue=max_queue, api_key=api_key,
                        speculator=speculator)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # a free port, held from now on: no race with other test runs
    port = sock.getsockname()[1]
    uv_config = uvicorn.Config(create_app(state), log_level="warning", timeout_graceful_shutdown=2,
                               access_log=False)
    server = DrainingServer(uv_config, state, drain_timeout)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            engine.shutdown()
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://127.0.0.1:{port}", state, server, thread)
