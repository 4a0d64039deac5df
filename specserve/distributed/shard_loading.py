"""Load one rank's part of a checkpoint: each rank reads only its rows (or columns) of each tensor.

A *plan* maps a checkpoint tensor name to the slices this rank needs (``Shard``) or None for tensors
every rank holds whole (norms, position embeddings, biases added after an all-reduce). Slices are read
with safetensors' ``get_slice``, so a rank touches only its own bytes of the (memory-mapped) files.
The model then receives tensors of its local shape and loads them with its ordinary ``load_weights``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from specserve.distributed.parallel_state import TensorParallel, first_kv_head, shard_arch
from specserve.model.arch_config import ModelArchConfig
from specserve.model.loader import ModelLoadError, read_arch_config, weight_files
from specserve.model.registry import get_model_class


class Shard(NamedTuple):
    dim: int  # 0: output rows; 1: input columns
    ranges: list[tuple[int, int]]  # (start, length) along dim, concatenated in this order
    full: int  # the checkpoint tensor's size along dim (checked)


Plan = Callable[[str], Shard | None]


def llama_plan(arch: ModelArchConfig, rank: int, world_size: int) -> Plan:
    local = shard_arch(arch, world_size)
    hd = arch.head_dim
    q = (rank * local.q_size, local.q_size)
    kv = (first_kv_head(arch, rank, world_size) * hd, local.kv_size)
    mlp = (rank * local.intermediate_size, local.intermediate_size)
    vocab = Shard(0, [(rank * local.vocab_size, local.vocab_size)], arch.vocab_size)

    def plan(name: str) -> Shard | None:
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            return vocab
        if ".q_proj." in name:
            return Shard(0, [q], arch.q_size)
        if ".k_proj." in name or ".v_proj." in name:
            return Shard(0, [kv], arch.kv_size)
        if ".gate_proj." in name or ".up_proj." in name:
            return Shard(0, [mlp], arch.intermediate_size)
        if name.endswith(".o_proj.weight"):
            return Shard(1, [q], arch.q_size)
        if name.endswith(".down_proj.weight"):
            return Shard(1, [mlp], arch.intermediate_size)
        return None

    return plan


def gpt_bigcode_plan(arch: ModelArchConfig, rank: int, world_size: int) -> Plan:
    local = shard_arch(arch, world_size)
    hd = arch.head_dim
    mlp = (rank * local.intermediate_size, local.intermediate_size)
    vocab = Shard(0, [(rank * local.vocab_size, local.vocab_size)], arch.vocab_size)
    qkv_full = arch.q_size + 2 * arch.kv_size
    if arch.num_kv_heads == arch.num_heads and arch.num_heads > 1:
        # Multi-head c_attn interleaves per head ([q_h k_h v_h] for each h): a rank's heads are one run.
        per_rank = 3 * local.q_size
        qkv = Shard(0, [(rank * per_rank, per_rank)], qkv_full)
    else:
        # Multi-query: [Q | K | V]; this rank's query heads, then its (replicated) KV head.
        k_start = arch.q_size + first_kv_head(arch, rank, world_size) * hd
        qkv = Shard(0, [(rank * local.q_size, local.q_size), (k_start, local.kv_size),
                        (k_start + arch.kv_size, local.kv_size)], qkv_full)

    def plan(name: str) -> Shard | None:
        if name.endswith(("wte.weight", "lm_head.weight")):
            return vocab
        if ".attn.c_attn." in name:
            return qkv
        if ".mlp.c_fc." in name:
            return Shard(0, [mlp], arch.intermediate_size)
        if name.endswith(".attn.c_proj.weight"):
            return Shard(1, [(rank * local.q_size, local.q_size)], arch.q_size)
        if name.endswith(".mlp.c_proj.weight"):
            return Shard(1, [mlp], arch.intermediate_size)
        return None

    return plan


_PLANS = {"GPTBigCodeForCausalLM": gpt_bigcode_plan}  # everything else is Llama-family


def plan_for(arch: ModelArchConfig, rank: int, world_size: int) -> Plan:
    return _PLANS.get(arch.architecture, llama_plan)(arch, rank, world_size)


def iter_shard_weights(files: list[Path], plan: Plan) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, this rank's tensor) for every tensor in the files, reading only the planned slices."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    shard = plan(name)
                    if shard is None:
                        yield name, f.get_tensor(name)
                        continue
                    tensor_slice = f.get_slice(name)
                    shape = tensor_slice.get_shape()
                    if len(shape) <= shard.dim or shape[shard.dim] != shard.full:
                        raise ValueError(f"weight {name!r} has shape {tuple(shape)}, expected size "
                                         f"{shard.full} in dimension {shard.dim}")
                    parts = [tensor_slice[start:start + length] if shard.dim == 0
                             else tensor_slice[:, start:start + length] for start, length in shard.ranges]
                    yield name, parts[0] if len(parts) == 1 else torch.cat(parts, dim=shard.dim)
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(file, f"cannot read weights ({e})") from e


def load_sharded_model(model_dir: Path, dtype: torch.dtype, tp: TensorParallel
                       ) -> tuple[nn.Module, ModelArchConfig]:
    """This rank's part of the model on ``tp.device``; returns (model, the whole model's arch)."""
    model_dir = Path(model_dir)
    arch = read_arch_config(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise ModelLoadError(model_dir, "folder has no *.safetensors weights")
    with torch.device("meta"):
        model = get_model_class(arch.architecture)(arch, tp)  # type: ignore[call-arg]
    model = model.to(dtype=dtype).to_empty(device=tp.device)
    try:
        model.load_weights(iter_shard_weights(files, plan_for(arch, tp.rank, tp.world_size)))  # type: ignore[operator]
    except ValueError as e:
        raise ModelLoadError(model_dir, str(e)) from e
    return model.eval().requires_grad_(False), arch
