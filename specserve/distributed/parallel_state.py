"""Process groups for tensor parallelism: backend choice, init, and the per-rank view of the model shape.

Two groups span the same ranks. The *device group* carries activations (the all-reduce after each
row-parallel layer, the vocabulary gather of the logits): NCCL on GPUs, gloo on CPUs, with a bounded
timeout so a hung peer ends in an error. The *control group* is always gloo on CPU tensors and carries
rank 0's per-step commands; workers wait on it between steps, so its timeout is effectively infinite
(a dead peer still ends the wait at once: gloo sees the closed connection).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from specserve.model.arch_config import ModelArchConfig

DEFAULT_TIMEOUT_S = 300.0  # device-group collectives (and the rendezvous)
CONTROL_TIMEOUT = timedelta(days=365)  # workers idle on the control group between requests


class TensorParallelError(RuntimeError):
    """Tensor parallelism cannot start or go on: backend missing, a worker died, a collective failed."""

    # Ranks may be mid-step when this is raised, so no later step can be trusted: the engine stops.
    fatal = True


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group; passed to the layers that communicate."""

    rank: int
    world_size: int
    device: torch.device
    device_group: Any  # ProcessGroup for activations
    control_group: Any  # gloo ProcessGroup for rank 0's commands

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place."""
        dist.all_reduce(x, group=self.device_group)
        return x

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n] per rank -> [..., n * world_size], rank 0's part first."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x, group=self.device_group)
        return torch.cat(parts, dim=-1)


def backend_for(device: str) -> str:
    """'nccl' for CUDA, 'gloo' for CPU; TensorParallelError when this build or machine lacks it."""
    device_type = torch.device(device).type
    if not dist.is_available():
        raise TensorParallelError("tensor parallelism needs torch.distributed, which this torch build lacks")
    if device_type == "cuda":
        if not dist.is_nccl_available():
            raise TensorParallelError(
                f"tensor parallelism on CUDA needs the NCCL backend, which this torch build "
                f"({torch.__version__}) lacks; use --device cpu (gloo) or a CUDA build of torch")
        return "nccl"
    if device_type == "cpu":
        if not dist.is_gloo_available():
            raise TensorParallelError(
                f"tensor parallelism on CPU needs the gloo backend, which this torch build ({torch.__version__}) lacks")
        return "gloo"
    raise TensorParallelError(f"tensor parallelism runs on cpu (gloo) or cuda (NCCL), not on {device_type!r}")


def check_cuda_devices(device: str, num_local_ranks: int) -> None:
    if torch.device(device).type == "cuda" and torch.cuda.device_count() < num_local_ranks:
        raise TensorParallelError(f"{num_local_ranks} ranks on this node need {num_local_ranks} GPUs; "
                                  f"{torch.cuda.device_count()} visible")


def rank_device(device: str, local_rank: int) -> torch.device:
    """CUDA ranks get one GPU each (cuda:<local rank>); CPU ranks share the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_tensor_parallel(rank: int, world_size: int, device: str, init_method: str,
                         timeout_s: float = DEFAULT_TIMEOUT_S, local_rank: int | None = None) -> TensorParallel:
    """Join the group (``init_method``: 'tcp://host:port' or 'env://' under torchrun)."""
    backend = backend_for(device)
    if dist.is_initialized():
        raise TensorParallelError("torch.distributed is already initialised in this process "
                                  "(one tensor-parallel engine per process)")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    dev = rank_device(device, rank if local_rank is None else local_rank)
    return TensorParallel(rank, world_size, dev, dist.group.WORLD, control)


def destroy_tensor_parallel() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when started by torchrun (or any launcher setting the env), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank = int(os.environ["RANK"])
    return rank, int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", rank))


def shard_arch(arch: ModelArchConfig, world_size: int) -> ModelArchConfig:
    """The shape one rank holds: 1/N of the query heads, KV heads, MLP columns and vocabulary.

    With fewer KV heads than ranks (multi-query attention) each rank keeps the one KV head its query
    heads read, so KV heads are replicated rather than split. ValueError when a size does not divide."""
    n = world_size
    if n < 1:
        raise ValueError(f"tensor-parallel size must be >= 1, got {n}")
    if n == 1:
        return arch
    problems = []
    if arch.num_heads % n:
        problems.append(f"the number of attention heads ({arch.num_heads})")
    if arch.num_kv_heads % n and n % arch.num_kv_heads:
        problems.append(f"the number of KV heads ({arch.num_kv_heads}; nor does {n} divide by it)")
    if arch.intermediate_size % n:
        problems.append(f"the MLP width ({arch.intermediate_size})")
    if arch.vocab_size % n:
        problems.append(f"the vocabulary size ({arch.vocab_size})")
    if problems:
        raise ValueError(f"tensor-parallel size {n} does not divide {' or '.join(problems)} of this "
                         f"{arch.architecture} model; choose a size that divides them")
    return dataclasses.replace(arch, num_heads=arch.num_heads // n, num_kv_heads=max(1, arch.num_kv_heads // n),
                               intermediate_size=arch.intermediate_size // n, vocab_size=arch.vocab_size // n)


def first_kv_head(arch: ModelArchConfig, rank: int, world_size: int) -> int:
    """Index of the first (global) KV head rank ``rank`` holds; see shard_arch for replication."""
    return rank * arch.num_kv_heads // world_size
