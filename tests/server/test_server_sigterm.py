"""`specserve serve` as a real process: it prints its URL, and SIGTERM drains before exiting 0.

One short request finishes during the drain; one endless request is aborted at the drain deadline;
a request that arrives while draining gets 503.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stream_chat(url: str, model: str, max_tokens: int, events: queue.Queue[Any]) -> None:
    """Read one streaming chat to the end; report the first token, then (finish_reason, tokens)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    finish, tokens, told = None, None, False
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content") and not told:
                        events.put("first token")
                        told = True
                    finish = choice["finish_reason"] or finish
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        events.put((finish, tokens))
    except Exception as exc:  # noqa: BLE001 - reported to the test thread
        events.put(exc)


def wait_for_url(proc: subprocess.Popen[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if "serving" in line and "http://" in line:
            return line.split("http://", 1)[1].split()[0].rstrip("/")
    raise AssertionError("server did not announce its URL:\n" + "".join(seen[-20:]))


def test_sigterm_drains_then_exits() -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "specserve.cli", "serve", "--port", str(port), "--threads", "1",
           "--kv-cache-memory", "64MiB", "--max-num-seqs", "4", "--drain-timeout", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = "http://" + wait_for_url(proc, timeout=120)
        assert url == f"http://127.0.0.1:{port}"
        model = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        assert model == "SmolLM2-135M-Instruct.Q4_1"  # the default GGUF's file name
        short: queue.Queue[Any] = queue.Queue()
        endless: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=stream_chat, args=(url, model, 12, short), daemon=True).start()
        threading.Thread(target=stream_chat, args=(url, model, 4000, endless), daemon=True).start()
        assert short.get(timeout=60) == "first token" and endless.get(timeout=60) == "first token"

        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = httpx.post(url + "/v1/completions", json={"model": "x", "prompt": "hi"}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(url + "/health", timeout=10).status_code == 503

        assert short.get(timeout=30) == ("length", 12)  # finished normally during the drain
        finish, tokens = endless.get(timeout=30)
        assert finish == "abort" and 0 < tokens < 4000  # cut at the drain deadline
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
