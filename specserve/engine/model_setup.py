"""Load a model, its tokenizer and a KV cache sized from the memory budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specserve.config import EngineConfig
from specserve.model.loader import load_model, resolve_model_dir
from specserve.tokenizer import Tokenizer
from specserve.worker.model_runner import ModelRunner, kv_bytes_per_block, torch_dtype


@dataclass
class LoadedModel:
    model_dir: Path
    model: nn.Module
    tokenizer: Tokenizer
    runner: ModelRunner
    num_blocks: int
    max_model_len: int
    eos_token_ids: list[int]
    vocab_size: int
    dtype: torch.dtype
    device: torch.device


def load_engine_model(config: EngineConfig) -> LoadedModel:
    dtype = torch_dtype(config.dtype)
    device = torch.device(config.device)
    model_dir = resolve_model_dir(config.model)
    tokenizer = Tokenizer.from_dir(model_dir)
    model, arch = load_model(model_dir, dtype, device)
    max_model_len = config.scheduler.max_model_len or arch.max_position_embeddings
    block_size = config.cache.block_size
    num_blocks = config.cache.num_blocks
    if num_blocks is None:
        per_block = kv_bytes_per_block(arch.num_layers, block_size, arch.num_kv_heads, arch.head_dim, dtype)
        num_blocks = config.cache.kv_cache_memory // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory {config.cache.kv_cache_memory} B holds no block of {per_block} B")
    eos = list(arch.eos_token_ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    runner = ModelRunner(model, arch.num_layers, arch.num_kv_heads, arch.head_dim, num_blocks, block_size,
                         eos, dtype, device)
    return LoadedModel(model_dir, model, tokenizer, runner, num_blocks, max_model_len, eos,
                       arch.vocab_size, dtype, device)
