"""OpenAI-style errors: every failure answers {"error": {"message", "type", "param", "code"}}.

A client's mistake is a 4xx that names the problem; 500 is kept for our own bugs.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable sentence naming each bad field, and the first field as ``param``."""
    parts, param = [], None
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"request body is not valid JSON ({detail})".replace(" ()", ""), None
        field = _field_path(err.get("loc", ()))
        if param is None and field:
            param = field
        if err.get("type") == "missing":
            parts.append(f"'{field}' is required")
        elif err.get("type") == "model_attributes_type" and not field:
            parts.append("request body must be a JSON object")
        else:
            parts.append(f"'{field}': {err.get('msg')}" if field else str(err.get("msg")))
    unique = list(dict.fromkeys(parts))
    return "; ".join(unique[:4]) or "invalid request", param


def _field_path(loc: tuple[int | str, ...]) -> str:
    """"messages.0.content" from pydantic's loc, without "body" and the union-member tags it adds
    ("str", "list[str]", "TextPart"): field names are lowercase identifiers, tags are not."""
    parts = []
    for x in loc:
        if isinstance(x, str) and (x == "body" or x in _TYPE_TAGS or not x.isidentifier() or x[0].isupper()):
            continue
        parts.append(str(x))
    return ".".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe_validation(exc)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return APIError(exc.status_code, message, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, "internal server error", type="server_error").response()
