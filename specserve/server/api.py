"""The FastAPI app: OpenAI routes, health, metrics and the chat page. I/O only; the engine decides.

``create_app(state)`` takes a ready ServerState, so tests can build an app around any engine.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from specserve.server.chat import create_chat_completion
from specserve.server.completions import create_completion
from specserve.server.errors import APIError, install_error_handlers
from specserve.server.protocol import ChatCompletionRequest, CompletionRequest
from specserve.server.state import ServerState
from specserve.server.streaming import ClientGone

STATIC_DIR = Path(__file__).parent / "static"
_COUNTED_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/"}


class GateMiddleware:
    """Before any /v1 route: the API key, then refusal while draining. Counts every response by status.

    Pure ASGI (not BaseHTTPMiddleware) so that streaming responses and disconnects pass untouched.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            error = self._refusal(scope) if path.startswith("/v1") else None
            if error is not None:
                await error.response()(scope, receive, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            if status and not path.startswith("/static"):
                label = path if path in _COUNTED_PATHS else "other"
                self.state.metrics.http_requests.labels(path=label, status=str(status[0])).inc()

    def _refusal(self, scope: Scope) -> APIError | None:
        key = self.state.api_key
        if key is not None:
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                return APIError(401, "missing or invalid API key; send 'Authorization: Bearer <key>'",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if self.state.draining:
            return APIError(503, "server is shutting down", code="shutting_down",
                            headers={"Retry-After": "5"})
        return None


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="specserve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_error_handlers(app)
    # 499, nginx's "client closed request": only our metrics ever see it.
    app.add_exception_handler(ClientGone, lambda request, exc: Response(status_code=499))
    app.add_middleware(GateMiddleware, state=state)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(state, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(state, body, request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        state.check_model(model_id)
        return _model_card(state)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if not state.engine.is_running:
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "specserve",
            "max_model_len": state.max_model_len, "speculator": state.speculator}
