"""``bench serve --launch``: the OpenAI server in a thread of the benchmark's process, on 127.0.0.1.

Convenient, but client and server then share one Python process (and its GIL): for figures to publish,
run ``specserve serve`` in its own process and point ``--url`` at it (the report generator does).
"""

from __future__ import annotations

import socket
import threading
import time
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


@dataclass
class LaunchedServer:
    url: str
    state: ServerState
    server: DrainingServer
    thread: threading.Thread

    @property
    def engine(self) -> LLMEngine:
        return self.state.engine.engine

    def stats(self) -> dict[str, Any]:
        return self.state.engine.stats()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until aborted or finished requests have left the engine (their blocks back in the pool)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if not self.state.in_flight and stats.get("num_running", 0) == 0 and stats.get("num_waiting", 0) == 0 \
                    and not self.engine.has_unfinished_requests():
                return
            time.sleep(0.05)

    def stop(self) -> None:
        self.wait_idle()
        self.server.should_exit = True
        self.thread.join(15)
        self.state.engine.shutdown()


def launch_server(bundle: ModelBundle, engine_kwargs: dict[str, Any],
                  max_queue: int | None = None) -> LaunchedServer:
    """Start a server on a free port of 127.0.0.1 around a new engine on ``bundle``'s weights."""
    config = build_engine_config(dtype=_dtype_name(bundle), **engine_kwargs)
    engine = AsyncLLMEngine(LLMEngine(config, bundle))
    state = ServerState(engine, bundle.model_dir.name, max_num_seqs=config.scheduler.max_num_seqs,
                        max_queue=max_queue, speculator=engine_kwargs.get("speculator"))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; the socket holds it from now on
    port = sock.getsockname()[1]
    uv_config = uvicorn.Config(create_app(state), log_level="warning", access_log=False,
                               timeout_graceful_shutdown=2)
    server = DrainingServer(uv_config, state, drain_timeout=10.0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="bench-uvicorn")
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            engine.shutdown()
            raise RuntimeError("the benchmark's server did not start")
        time.sleep(0.02)
    return LaunchedServer(f"http://127.0.0.1:{port}", state, server, thread)


def _dtype_name(bundle: ModelBundle) -> str:
    return str(bundle.dtype).removeprefix("torch.")
