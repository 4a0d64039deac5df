"""`specserve serve`: load the engine, build the app, run uvicorn; drain on SIGTERM.

SIGTERM (what orchestrators send): stop admitting (new /v1 requests get 503, /health turns 503 so
load balancers look away), let running requests finish for up to ``drain_timeout`` seconds, abort
what is left, then exit 0. A second SIGTERM, or Ctrl-C, takes uvicorn's ordinary quick path.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from specserve.engine.async_engine import AsyncLLMEngine
from specserve.engine.engine import LLMEngine
from specserve.server.api import create_app
from specserve.server.state import ServerState

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float,
                 announce: str | None = None) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self.announce = announce
        self._drain_deadline: float | None = None
        self._aborted = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain_deadline is None:
            self.start_drain()
        else:
            super().handle_exit(sig, frame)

    def start_drain(self) -> None:
        """Stop admitting; on_tick exits once nothing is in flight or the deadline passes."""
        logger.warning("draining: %d request(s) in flight, waiting up to %.0fs",
                       len(self.state.in_flight), self.drain_timeout)
        self.state.draining = True
        self._drain_deadline = time.monotonic() + self.drain_timeout

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            if not self.state.in_flight:
                self.should_exit = True
            elif time.monotonic() > self._drain_deadline and not self._aborted:
                # Aborted requests end their streams with finish_reason "abort"; then in_flight empties.
                self.state.abort_all()
                self._aborted = True
            elif time.monotonic() > self._drain_deadline + 5.0:
                self.should_exit = True  # a client that never reads must not hold the process
        return await super().on_tick(counter)

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self.announce:
            print(self.announce, flush=True)


def model_name_for(model: str | None) -> str:
    """The id clients put in "model": the GGUF file's stem or the folder's name."""
    from specserve.model.loader import default_model_gguf

    path = Path(model) if model else default_model_gguf()
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def run_server(engine_args: dict[str, Any], host: str = "127.0.0.1", port: int = 8000,
               api_key: str | None = None, max_queue: int | None = None,
               served_model_name: str | None = None, drain_timeout: float = 30.0,
               log_level: str = "info") -> int:
    from specserve.engine.llm import build_engine_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    engine = LLMEngine(build_engine_config(**engine_args))
    async_engine = AsyncLLMEngine(engine)
    model = engine_args.get("model")
    name = served_model_name or model_name_for(model)
    aliases = frozenset(x for x in (model, engine.m.bundle.model_dir.name) if x)
    state = ServerState(async_engine, name, max_num_seqs=engine.config.scheduler.max_num_seqs,
                        max_queue=max_queue, api_key=api_key, speculator=engine_args.get("speculator"),
                        model_aliases=aliases)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown_host}:{port}"
    announce = (f"specserve: serving '{name}' at {url}  (chat page: {url}/ , OpenAI API: {url}/v1)"
                + (" [API key required]" if api_key else ""))
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=5, access_log=False)
    server = DrainingServer(config, state, drain_timeout, announce)
    failures: list[BaseException] = []
    add_failure_callback = getattr(engine.runner, "add_failure_callback", None)
    if add_failure_callback is not None:  # tensor parallelism: a dead worker stops the server

        def on_failure(exc: BaseException) -> None:
            failures.append(exc)
            async_engine.error = async_engine.error or exc  # /health answers 503 from now on
            server.should_exit = True

        add_failure_callback(on_failure)
    try:
        server.run()
    finally:
        async_engine.shutdown()
        shutdown_runner = getattr(engine.runner, "shutdown", None)
        if shutdown_runner is not None:
            shutdown_runner()
    if failures:
        print(f"specserve: error: {failures[0]}", file=sys.stderr)
        return 1
    if not server.started:
        print(f"specserve: error: could not start the server on {host}:{port}", file=sys.stderr)
        return 2
    return 0
