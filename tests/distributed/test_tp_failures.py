"""Clear errors: sizes that do not divide, a missing backend, and a worker that dies (bounded time, no hang)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch.distributed as dist
from tp_helpers import free_port

from specserve import LLM, SamplingParams
from specserve.distributed.parallel_state import TensorParallelError, backend_for, shard_arch
from specserve.model.loader import read_arch_config

REPO = Path(__file__).resolve().parents[2]
FAILURE_BOUND_S = 30.0
PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def test_sizes_that_do_not_divide(tp_llama_dir: Path) -> None:
    arch = read_arch_config(tp_llama_dir)  # 4 heads, 2 KV heads, MLP 96, vocabulary 64
    with pytest.raises(ValueError, match=r"attention heads \(4\)"):
        shard_arch(arch, 3)
    with pytest.raises(ValueError, match=r"vocabulary size \(66\)"):
        shard_arch(dataclasses.replace(arch, vocab_size=66), 4)
    assert shard_arch(dataclasses.replace(arch, num_kv_heads=1), 2).num_kv_heads == 1  # MQA: replicated
    started = time.monotonic()
    with pytest.raises(ValueError, match="tensor-parallel size 3 does not divide"):
        LLM(model=str(tp_llama_dir), tensor_parallel_size=3)  # refused before any process starts
    assert time.monotonic() - started < 10


def test_missing_backend(tp_llama_dir: Path) -> None:
    with pytest.raises(TensorParallelError, match="not on 'meta'"):
        backend_for("meta")
    if dist.is_nccl_available():
        pytest.skip("this torch build has NCCL")
    with pytest.raises(TensorParallelError, match="NCCL"):
        LLM(model=str(tp_llama_dir), tensor_parallel_size=2, device="cuda")


def test_killed_worker_fails_the_engine(tp_llama_dir: Path) -> None:
    llm = LLM(model=str(tp_llama_dir), tensor_parallel_size=2, num_kv_blocks=32, block_size=4)
    runner = llm.engine.runner
    failed = threading.Event()
    runner.add_failure_callback(lambda exc: failed.set())
    try:
        assert len(llm.generate([[3, 4, 5]], PARAMS)[0].outputs[0].token_ids) == 4
        worker = runner.workers.processes[0]
        os.kill(worker.pid, signal.SIGKILL)
        assert failed.wait(FAILURE_BOUND_S), "the monitor did not notice the dead worker"
        started = time.monotonic()
        with pytest.raises(TensorParallelError, match=r"worker rank 1 .* killed by signal 9"):
            llm.generate([[3, 4, 5]], PARAMS)
        assert time.monotonic() - started < FAILURE_BOUND_S
    finally:
        for request_id in list(llm.engine.groups):
            llm.engine.abort_request(request_id)
        llm.engine.step()  # flush the aborts
        runner.shutdown()


def test_killed_worker_stops_the_server(tp_llama_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "specserve.cli", "serve", "--model", str(tp_llama_dir), "--port", str(port),
             "--tensor-parallel-size", "2", "--kv-cache-memory", "1MiB", "--threads", "1"],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        pid = None
        while time.monotonic() < deadline and server.poll() is None:
            text = log.read_text()
            match = re.search(r"worker rank 1 started \(pid (\d+)\)", text)
            pid = int(match.group(1)) if match else None
            if pid and "serving" in text:
                break
            time.sleep(0.2)
        assert pid and server.poll() is None, log.read_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        code = server.wait(FAILURE_BOUND_S)
        assert time.monotonic() - started < FAILURE_BOUND_S
        assert code == 1
        assert "worker rank 1" in log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
