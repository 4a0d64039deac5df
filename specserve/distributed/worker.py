"""Ranks > 0: load this rank's shard, size its KV cache, then mirror rank 0's commands until SHUTDOWN.

A worker has no scheduler, sampler or speculator: it owns 1/N of the weights and of the KV cache
(its KV heads) and runs what rank 0 broadcasts (protocol.py). It ends when rank 0 says so, or with an
error when rank 0 goes away (gloo reports the closed connection), so no worker outlives its server.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from specserve.distributed.parallel_state import (
    DEFAULT_TIMEOUT_S,
    TensorParallel,
    TensorParallelError,
    destroy_tensor_parallel,
    init_tensor_parallel,
    torchrun_env,
)
from specserve.distributed.protocol import Command, ControlChannel, unpack_pairs, unpack_step
from specserve.distributed.shard_loading import load_sharded_model
from specserve.model.fast_linear import enable_fast_linear
from specserve.worker.model_runner import kv_bytes_per_block, torch_dtype

logger = logging.getLogger(__name__)

KVCache = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RankSpec:
    """What every rank needs to build its part (picklable: spawned workers receive it)."""

    model_dir: str
    dtype: str
    device: str
    block_size: int
    kv_cache_memory: int  # bytes per rank
    num_blocks: int | None  # fixed pool size (tests), else from kv_cache_memory
    num_threads: int
    timeout_s: float = DEFAULT_TIMEOUT_S


def load_rank(tp: TensorParallel, spec: RankSpec) -> tuple[nn.Module, int]:
    """This rank's model (row-major copies on CPU as in model_setup) and the KV blocks its budget holds."""
    model, _ = load_sharded_model(spec.model_dir, torch_dtype(spec.dtype), tp)
    enable_fast_linear(model)
    if spec.num_blocks is not None:
        return model, spec.num_blocks
    local = model.local_arch
    per_block = kv_bytes_per_block(local.num_layers, spec.block_size, local.num_kv_heads, local.head_dim,
                                   torch_dtype(spec.dtype))
    num_blocks = spec.kv_cache_memory // per_block
    if num_blocks < 1:
        raise ValueError(f"kv_cache_memory {spec.kv_cache_memory} B holds no block of {per_block} B")
    return model, num_blocks


def handshake(tp: TensorParallel, error: str | None, num_blocks: int) -> int:
    """Every rank reports whether it loaded; all agree on the smallest KV pool. Raises on any failure."""
    reports: list[tuple[str | None, int] | None] = [None] * tp.world_size
    dist.all_gather_object(reports, (error, num_blocks), group=tp.control_group)
    for rank, report in enumerate(reports):
        assert report is not None
        if report[0] is not None:
            raise TensorParallelError(f"tensor-parallel rank {rank} failed to start: {report[0]}")
    return min(report[1] for report in reports if report is not None)


def allocate_kv(model: nn.Module, num_blocks: int, block_size: int, dtype: torch.dtype,
                device: torch.device) -> list[KVCache]:
    local = model.local_arch
    shape = (num_blocks, block_size, local.num_kv_heads, local.head_dim)  # this rank's KV heads
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(local.num_layers)]


class TPWorker:
    def __init__(self, model: nn.Module, tp: TensorParallel, kv_caches: list[KVCache]) -> None:
        self.model = model
        self.tp = tp
        self.kv_caches = kv_caches
        self.channel = ControlChannel(tp)
        weight = model.get_input_embeddings().weight
        self.hidden_size, self.dtype = weight.shape[1], weight.dtype

    @torch.inference_mode()
    def run(self) -> None:
        while True:
            try:
                message = self.channel.receive()
            except RuntimeError as exc:
                raise TensorParallelError(f"lost rank 0 ({str(exc).splitlines()[0][:160]})") from exc
            if message.command == Command.STEP:
                input_ids, positions, md = unpack_step(message.payload, message.meta, self.tp.device)
                self.model(input_ids, positions, self.kv_caches, md)
            elif message.command == Command.LOGITS:
                hidden = torch.empty(message.meta[0], self.hidden_size, dtype=self.dtype, device=self.tp.device)
                dist.broadcast(hidden, src=0, group=self.tp.device_group)
                self.model.compute_logits(hidden)  # our part of the gather; rank 0 keeps the logits
            elif message.command == Command.COPY_BLOCKS:
                self._copy(*unpack_pairs(message.payload), block_level=True)
            elif message.command == Command.MOVE_SLOTS:
                self._copy(*unpack_pairs(message.payload), block_level=False)
            elif message.command == Command.SHUTDOWN:
                return

    def _copy(self, src: list[int], dst: list[int], block_level: bool) -> None:
        """Whole blocks (copy-on-write) or single slots (accepted tree drafts), as ModelRunner does."""
        src_t = torch.tensor(src, device=self.tp.device)
        dst_t = torch.tensor(dst, device=self.tp.device)
        for k_cache, v_cache in self.kv_caches:
            for cache in (k_cache, v_cache):
                flat = cache if block_level else cache.view(-1, cache.shape[2], cache.shape[3])
                flat.index_copy_(0, dst_t, flat.index_select(0, src_t))  # gather first: no overlap hazard


def serve_rank(tp: TensorParallel, spec: RankSpec) -> None:
    """Load, agree with the other ranks, then run the loop (ranks > 0)."""
    model: nn.Module | None = None
    error: str | None = None
    num_blocks = 0
    try:
        model, num_blocks = load_rank(tp, spec)
    except Exception as exc:  # noqa: BLE001 - reported through the handshake: rank 0 says which rank and why
        error = f"{type(exc).__name__}: {exc}"
    num_blocks = handshake(tp, error, num_blocks)  # raises if any rank failed
    assert model is not None
    kv = allocate_kv(model, num_blocks, spec.block_size, torch_dtype(spec.dtype), tp.device)
    TPWorker(model, tp, kv).run()


def worker_main(rank: int, world_size: int, init_method: str, spec: RankSpec) -> None:
    """Entry point of a worker spawned by the launcher (torch.multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for rank 0, which then shuts us down
    torch.set_num_threads(spec.num_threads)
    try:
        tp = init_tensor_parallel(rank, world_size, spec.device, init_method, spec.timeout_s)
        serve_rank(tp, spec)
    except Exception as exc:  # noqa: BLE001 - a worker's last word, then its exit status
        print(f"specserve: tensor-parallel rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    destroy_tensor_parallel()


def run_torchrun_worker(spec: RankSpec) -> int:
    """Ranks > 0 under torchrun: the same loop, joining through the env:// rendezvous."""
    env = torchrun_env()
    assert env is not None and env[0] > 0
    rank, world_size, local_rank = env
    torch.set_num_threads(spec.num_threads)
    try:
        tp = init_tensor_parallel(rank, world_size, spec.device, "env://", spec.timeout_s, local_rank)
        serve_rank(tp, spec)
    except Exception as exc:  # noqa: BLE001 - a worker's last word, then its exit status
        print(f"specserve: tensor-parallel rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    destroy_tensor_parallel()
    return 0
