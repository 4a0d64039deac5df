"""Start a tensor-parallel engine: spawn (or, under torchrun, join) the workers, load rank 0's shard, watch.

``--tensor-parallel-size N`` on one machine: this process is rank 0 and spawns ranks 1..N-1 with
torch.multiprocessing (spawn), rendezvousing on a free port of 127.0.0.1. A monitor thread waits on
the workers' process sentinels, so a worker's death is noticed at once, even while the server is
idle. Under torchrun (RANK/WORLD_SIZE set; any number of nodes) every process runs the same command:
rank 0 continues into the engine and server, ranks > 0 run the worker loop (cli.py).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.connection
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.multiprocessing as mp
from torch import nn

from specserve.config import EngineConfig
from specserve.distributed.driver import TPModelRunner
from specserve.distributed.parallel_state import (
    TensorParallel,
    TensorParallelError,
    backend_for,
    check_cuda_devices,
    destroy_tensor_parallel,
    init_tensor_parallel,
    shard_arch,
    torchrun_env,
)
from specserve.distributed.worker import RankSpec, handshake, load_rank, worker_main
from specserve.engine.model_setup import LoadedModel, ModelBundle
from specserve.model.loader import read_arch_config, resolve_model_dir, weight_files
from specserve.tokenizer import Tokenizer
from specserve.worker.model_runner import torch_dtype

logger = logging.getLogger(__name__)
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcesses:
    """Ranks 1..N-1 as child processes, watched through their sentinels."""

    def __init__(self, world_size: int, init_method: str, spec: RankSpec) -> None:
        ctx = mp.get_context("spawn")
        self.processes = [ctx.Process(target=worker_main, args=(rank, world_size, init_method, spec),
                                      name=f"specserve-tp-rank{rank}", daemon=True)
                          for rank in range(1, world_size)]
        for rank, process in enumerate(self.processes, start=1):
            process.start()
            logger.info("tensor-parallel worker rank %d started (pid %d)", rank, process.pid)
        self.stopping = False  # set before an orderly shutdown: exits are then expected
        self._monitor: threading.Thread | None = None

    def dead_message(self) -> str | None:
        for rank, process in enumerate(self.processes, start=1):
            if process.sentinel in multiprocessing.connection.wait([process.sentinel], timeout=0):
                process.join(1.0)  # its pipe closes a moment before its exit status can be read
            code = process.exitcode
            if code is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return f"tensor-parallel worker rank {rank} (pid {process.pid}) {how}"
        return None

    def wait_for_death(self, timeout: float) -> str | None:
        multiprocessing.connection.wait([p.sentinel for p in self.processes], timeout)
        return self.dead_message()

    def watch(self, on_death: Callable[[str], None]) -> None:
        def run() -> None:
            sentinels = [p.sentinel for p in self.processes]
            while not self.stopping:
                if multiprocessing.connection.wait(sentinels, timeout=0.5) and not self.stopping:
                    on_death(self.dead_message() or "a tensor-parallel worker died")
                    return

        self._monitor = threading.Thread(target=run, name="specserve-tp-monitor", daemon=True)
        self._monitor.start()

    def join(self, timeout: float) -> None:
        """Wait for the workers to exit, then terminate and kill what is left."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)


def call_watched(fn: Callable[[], T], workers: WorkerProcesses, what: str) -> T:
    """Run a blocking collective (rendezvous, handshake) but give up at once if a worker dies."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        dead = workers.dead_message()
        if dead is not None and thread.is_alive():
            raise TensorParallelError(f"{dead} while {what}")
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


class FullEmbeddings:
    """The whole embedding and LM head, read on rank 0 only for speculators that borrow them (MLP)."""

    def __init__(self, model_dir: Path, tie_word_embeddings: bool) -> None:
        self.files = weight_files(model_dir)
        self.tied = tie_word_embeddings

    def _read(self, suffixes: tuple[str, ...]) -> torch.Tensor:
        from safetensors import safe_open

        for file in self.files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if name.endswith(suffixes):
                        return f.get_tensor(name)
        raise TensorParallelError(f"no tensor named *{suffixes[0]} in the checkpoint")

    def get_input_embeddings(self) -> nn.Embedding:
        return nn.Embedding.from_pretrained(self._read(("embed_tokens.weight", "wte.weight")))

    def get_output_embeddings(self) -> torch.Tensor:
        return self.get_input_embeddings().weight if self.tied else self._read(("lm_head.weight",))


def rank_spec(config: EngineConfig, model_dir: Path) -> RankSpec:
    return RankSpec(model_dir=str(model_dir), dtype=config.dtype, device=config.device,
                    block_size=config.cache.block_size, kv_cache_memory=config.cache.kv_cache_memory,
                    num_blocks=config.cache.num_blocks, num_threads=torch.get_num_threads())


def start_group(config: EngineConfig, spec: RankSpec) -> tuple[TensorParallel, WorkerProcesses | None]:
    n = config.tensor_parallel_size
    env = torchrun_env()
    if env is not None:
        rank, world_size, local_rank = env
        if world_size != n:
            raise ValueError(f"--tensor-parallel-size is {n} but the launcher started {world_size} processes")
        assert rank == 0, "ranks > 0 run the worker loop (cli.py)"
        return init_tensor_parallel(0, n, config.device, "env://", spec.timeout_s, local_rank), None
    check_cuda_devices(config.device, n)
    init_method = f"tcp://127.0.0.1:{free_port()}"
    workers = WorkerProcesses(n, init_method, spec)
    try:
        tp = call_watched(lambda: init_tensor_parallel(0, n, config.device, init_method, spec.timeout_s),
                          workers, "joining the tensor-parallel group")
    except BaseException:
        workers.join(0.0)
        raise
    return tp, workers


def load_tensor_parallel_model(config: EngineConfig) -> LoadedModel:
    """Rank 0's LoadedModel: its shard, a TPModelRunner driving the workers, the speculator if any."""
    model_dir = resolve_model_dir(config.model)  # a GGUF is imported here, once, before workers start
    arch = read_arch_config(model_dir)
    shard_arch(arch, config.tensor_parallel_size)  # ValueError before any process starts
    backend_for(config.device)  # TensorParallelError when the backend is missing
    tokenizer = Tokenizer.from_dir(model_dir)
    spec = rank_spec(config, model_dir)
    tp, workers = start_group(config, spec)
    try:
        error: str | None = None
        try:
            model, num_blocks = load_rank(tp, spec)
        except Exception as exc:  # noqa: BLE001 - every rank learns of it through the handshake
            error, num_blocks = f"{type(exc).__name__}: {exc}", 0
            load_error: Exception = exc

        def agree() -> int:
            return handshake(tp, error, num_blocks)

        num_blocks = call_watched(agree, workers, "loading") if workers else agree()
    except BaseException:
        if workers is not None:
            workers.join(5.0)
        destroy_tensor_parallel()
        if error is not None:
            raise load_error from None  # rank 0's own error, not the handshake's summary
        raise
    dtype = torch_dtype(config.dtype)
    runner = TPModelRunner(model, tp, workers, num_blocks, config.cache.block_size, [], dtype)
    atexit.register(runner.shutdown)
    if workers is not None:
        def on_death(message: str) -> None:
            runner.fail(TensorParallelError(message))

        workers.watch(on_death)
    try:
        bundle = ModelBundle(model_dir, model, arch, tokenizer, dtype, tp.device)
        runner.eos_token_ids = bundle.eos_token_ids
        if config.spec.enabled:
            from specserve.spec.factory import build_spec_decoder

            full = FullEmbeddings(model_dir, arch.tie_word_embeddings)
            decoder, depth, candidates = build_spec_decoder(config.spec, full, model_dir,  # type: ignore[arg-type]
                                                            dtype, tp.device)
            runner.attach_speculator(decoder, depth, candidates)
    except BaseException:
        runner.shutdown()
        raise
    max_model_len = min(config.scheduler.max_model_len or arch.max_position_embeddings,
                        arch.max_position_embeddings)
    return LoadedModel(bundle, runner, num_blocks, max_model_len)
