"""The CLI: user errors are one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "specserve.cli", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["generate", "hi", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--kv-cache-memory", "lots"], "memory"),
    (["generate", "hi", "--cuda-graphs"], "cuda_graphs needs device 'cuda'"),
])
def test_user_errors_are_one_line(args: list[str], expected: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("specserve: error:") and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_generate_json_on_tiny_model(tiny_llama_dir) -> None:
    import json

    result = run_cli("generate", "Hello", "--model", str(tiny_llama_dir), "--max-tokens", "5", "--json",
                     "--threads", "1")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert len(out["token_ids"]) == 5 and out["finish_reason"] == "length"
