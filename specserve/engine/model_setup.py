"""Load a model and its tokenizer once; build a runner with a KV cache sized from the memory budget.

Loading (the bundle) and sizing (the runner) are separate so that several engines with different cache
or speculation settings can share one set of weights (tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from specserve.config import EngineConfig
from specserve.model.arch_config import ModelArchConfig
from specserve.model.fast_linear import enable_fast_linear
from specserve.model.loader import load_model, resolve_model_dir
from specserve.tokenizer import Tokenizer
from specserve.worker.model_runner import ModelRunner, kv_bytes_per_block, torch_dtype


@dataclass
class ModelBundle:
    model_dir: Path
    model: nn.Module
    arch: ModelArchConfig
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device

    @property
    def eos_token_ids(self) -> list[int]:
        eos = list(self.arch.eos_token_ids)
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        return eos


@dataclass
class LoadedModel:
    bundle: ModelBundle
    runner: ModelRunner
    num_blocks: int
    max_model_len: int

    @property
    def tokenizer(self) -> Tokenizer:
        return self.bundle.tokenizer

    @property
    def eos_token_ids(self) -> list[int]:
        return self.bundle.eos_token_ids

    @property
    def vocab_size(self) -> int:
        return self.bundle.arch.vocab_size


def load_bundle(model: str | None, dtype: str = "float32", device: str = "cpu") -> ModelBundle:
    torch_dt = torch_dtype(dtype)
    dev = torch.device(device)
    model_dir = resolve_model_dir(model)
    tokenizer = Tokenizer.from_dir(model_dir)
    net, arch = load_model(model_dir, torch_dt, dev)
    enable_fast_linear(net)  # few-row products on CPU go to the hand-written kernel
    return ModelBundle(model_dir, net, arch, tokenizer, torch_dt, dev)


def load_engine_model(config: EngineConfig, bundle: ModelBundle | None = None) -> LoadedModel:
    if config.tensor_parallel_size > 1:
        if bundle is not None:
            raise ValueError("a shared model bundle cannot be used with tensor parallelism (each rank loads its shard)")
        from specserve.distributed.launcher import load_tensor_parallel_model

        return load_tensor_parallel_model(config)
    if bundle is None:
        bundle = load_bundle(config.model, config.dtype, config.device)
    elif bundle.dtype != torch_dtype(config.dtype):
        raise ValueError("the shared model bundle was loaded with another dtype")
    arch = bundle.arch
    max_model_len = min(config.scheduler.max_model_len or arch.max_position_embeddings,
                        arch.max_position_embeddings)
    block_size = config.cache.block_size
    num_blocks = config.cache.num_blocks
    if num_blocks is None:
        per_block = kv_bytes_per_block(arch.num_layers, block_size, arch.num_kv_heads, arch.head_dim, bundle.dtype)
        num_blocks = config.cache.kv_cache_memory // per_block
        if num_blocks < 1:
            raise ValueError(f"kv_cache_memory {config.cache.kv_cache_memory} B holds no block of {per_block} B")
    runner = ModelRunner(bundle.model, arch.num_layers, arch.num_kv_heads, arch.head_dim, num_blocks, block_size,
                         bundle.eos_token_ids, bundle.dtype, bundle.device)
    if config.spec.enabled:
        from specserve.spec.factory import build_spec_decoder

        decoder, depth, candidates = build_spec_decoder(config.spec, bundle.model, bundle.model_dir,
                                                        bundle.dtype, bundle.device)
        runner.attach_speculator(decoder, depth, candidates)
    runner.warm_up_attention()
    if config.cuda_graphs and not runner.enable_cuda_graphs(config.scheduler.max_num_seqs, max_model_len):
        raise ValueError("cuda_graphs needs a CUDA device and Triton (pip install triton)")
    return LoadedModel(bundle, runner, num_blocks, max_model_len)
