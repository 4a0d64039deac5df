"""Bad input, auth, the bounded queue and draining, over raw HTTP: status codes and OpenAI error bodies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import pytest
from server_harness import MODEL_NAME, RunningServer, start_server

from specserve.engine.model_setup import ModelBundle

pytestmark = pytest.mark.slow

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server(bundle: ModelBundle) -> Iterator[RunningServer]:
    # Two running sequences and one waiting at most; a short context for the length check.
    running = start_server(bundle, max_num_seqs=2, max_queue=1, api_key=KEY, max_model_len=64)
    yield running
    running.stop()


@pytest.fixture()
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client:
        yield client


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2, **fields}


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"messages": MESSAGES}, "model", "required"),
    ({"model": MODEL_NAME}, "messages", "required"),
    (chat(messages=[]), "messages", "at least 1"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages.0.role", "'user'"),
    (chat(temperature="hot"), "temperature", "number"),
    (chat(max_tokens="10"), "max_tokens", "integer"),
    (chat(stream="yes"), "stream", "boolean"),
    (chat(temperature=-1), "temperature", ">= 0"),
    (chat(top_p=1.5), "top_p", "(0, 1]"),
    (chat(max_tokens=0), "max_tokens", ">= 1"),
    (chat(n=0), "n", ">= 1"),
    (chat(n=1000), "n", "16"),
    (chat(presence_penalty=3), "presence_penalty", "[-2, 2]"),
    (chat(stop=[""]), "stop", "non-empty"),
    (chat(top_logprobs=3), "top_logprobs", "requires logprobs"),
    (chat(logprobs=True, top_logprobs=99), "top_logprobs", "[0, 20]"),
    (chat(tools=[{"type": "function"}]), "tools", "not supported"),
    (chat(stream_options={"include_usage": True}), "stream_options", "stream"),
])
def test_bad_chat_request(http: httpx.Client, body: dict[str, Any], param: str, words: str) -> None:
    error = error_of(http.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == param and words in error["message"]
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": MODEL_NAME, "prompt": ""}, "prompt"),
    ({"model": MODEL_NAME, "prompt": []}, "prompt"),
    ({"model": MODEL_NAME, "prompt": 5}, "prompt"),
    ({"model": MODEL_NAME, "prompt": [10**9]}, "prompt"),  # outside the vocabulary
    ({"model": MODEL_NAME, "prompt": "x", "logprobs": 50}, "logprobs"),
    ({"model": MODEL_NAME, "prompt": "x", "echo": True}, "echo"),
])
def test_bad_completion_request(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    assert error_of(http.post("/v1/completions", json=body), 400)["param"] == param


def test_malformed_json_and_non_object(http: httpx.Client) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    error = error_of(http.post("/v1/chat/completions", content=b'{"model": ', headers=headers), 400)
    assert "JSON" in error["message"]
    error = error_of(http.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400)
    assert "object" in error["message"]


def test_unknown_model_and_route(http: httpx.Client) -> None:
    error = error_of(http.post("/v1/chat/completions", json=chat(model="gpt-17")), 404)
    assert error["code"] == "model_not_found" and "gpt-17" in error["message"]
    error_of(http.get("/v1/models/gpt-17"), 404)
    error_of(http.get("/v1/nothing-here"), 404)
    error_of(http.get("/v1/chat/completions"), 405)


def test_prompt_over_context_length(http: httpx.Client) -> None:
    long = [{"role": "user", "content": "hello " * 200}]
    error = error_of(http.post("/v1/chat/completions", json=chat(messages=long)), 400)
    assert error["code"] == "context_length_exceeded" and "64" in error["message"]
    too_long = {"model": MODEL_NAME, "prompt": list(range(1, 80))}
    error = error_of(http.post("/v1/completions", json=too_long), 400)
    assert error["code"] == "context_length_exceeded"


def test_api_key(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            error = error_of(anonymous.get("/v1/models", headers=headers), 401)
            assert error["code"] == "invalid_api_key"
        # Auth comes before parsing: a stranger learns nothing about the body.
        error_of(anonymous.post("/v1/chat/completions", content=b"{"), 401)
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/").status_code == 200


def _open_stream(stack: ExitStack, http: httpx.Client) -> Iterator[str]:
    body = chat(max_tokens=40, stream=True)
    response = stack.enter_context(http.stream("POST", "/v1/chat/completions", json=body))
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(lines).startswith("data:")  # the role chunk: admitted and queued
    return lines  # keep it: dropping a half-read iterator closes the connection


def test_queue_full_then_disconnects_free_everything(server: RunningServer, http: httpx.Client) -> None:
    with server.paused(), ExitStack() as stack:
        streams = [_open_stream(stack, http) for _ in range(3)]  # 2 running + 1 waiting: the queue is full
        assert len(streams) == len(server.state.in_flight) == 3
        response = http.post("/v1/chat/completions", json=chat())
        error = error_of(response, 429)
        assert error["code"] == "queue_full" and response.headers["Retry-After"] == "1"
    # Leaving the block closed the three connections mid-stream: their requests must be aborted.
    stats = server.wait_idle()
    assert not server.state.in_flight
    assert stats["kv_blocks_in_use"] == 0 and stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200


def test_non_streaming_disconnect_aborts(server: RunningServer) -> None:
    with server.paused(), httpx.Client(base_url=server.url, headers=AUTH, timeout=1.0) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.post("/v1/chat/completions", json=chat(max_tokens=30))
        deadline = time.monotonic() + 5
        while server.state.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not server.state.in_flight  # released when the client left, while the engine was held
    stats = server.wait_idle(timeout=15)
    assert stats["kv_blocks_in_use"] == 0 and stats["num_running"] == 0


def test_draining_refuses_new_requests(server: RunningServer, http: httpx.Client) -> None:
    server.state.draining = True
    try:
        error = error_of(http.post("/v1/chat/completions", json=chat()), 503)
        assert error["code"] == "shutting_down"
        assert http.get("/health").status_code == 503
    finally:
        server.state.draining = False
    assert http.get("/health").json() == {"status": "ok"}


def test_error_metrics_counted(http: httpx.Client) -> None:
    text = http.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("specserve_http_requests_total")]
    assert any('status="400"' in line for line in lines) and any('status="429"' in line for line in lines)
