"""Fixtures for model tests: tiny random HF checkpoints and a paged-KV driver for our models."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from specserve.attention.metadata import AttentionMetadata

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)


class PagedDriver:
    """Runs a model step by step through a paged KV cache whose blocks are handed out shuffled.

    Each step is a list of (request id, new token ids); a request's positions continue from its cached
    length. Returns {request id: float32 logits [num_new, vocab]}.
    """

    def __init__(self, model: torch.nn.Module, num_blocks: int = 64, block_size: int = 4,
                 seed: int = 0) -> None:
        arch = model.arch
        self.model = model
        self.block_size = block_size
        shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        dtype = model.get_input_embeddings().weight.dtype
        self.kv_caches = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))
                          for _ in range(arch.num_layers)]
        self.free_blocks = list(range(num_blocks))
        random.Random(seed).shuffle(self.free_blocks)  # out-of-order, interleaved block tables
        self.blocks: dict[str, list[int]] = {}
        self.num_cached: dict[str, int] = {}

    def step(self, batch: list[tuple[str, list[int]]]) -> dict[str, torch.Tensor]:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        for req, tokens in batch:
            blocks = self.blocks.setdefault(req, [])
            start = self.num_cached.get(req, 0)
            end = start + len(tokens)
            while len(blocks) * self.block_size < end:
                blocks.append(self.free_blocks.pop())
            for pos in range(start, end):
                slots.append(blocks[pos // self.block_size] * self.block_size + pos % self.block_size)
            input_ids += tokens
            positions += range(start, end)
            query_start_loc.append(query_start_loc[-1] + len(tokens))
            seq_lens.append(end)
            self.num_cached[req] = end
        max_blocks = max(len(self.blocks[req]) for req, _ in batch)
        block_tables = torch.zeros(len(batch), max_blocks, dtype=torch.long)
        for i, (req, _) in enumerate(batch):
            block_tables[i, :len(self.blocks[req])] = torch.tensor(self.blocks[req])
        md = AttentionMetadata(slot_mapping=torch.tensor(slots), query_start_loc=query_start_loc,
                               seq_lens=seq_lens, block_tables=block_tables, block_size=self.block_size)
        with torch.inference_mode():
            hidden = self.model(torch.tensor(input_ids), torch.tensor(positions), self.kv_caches, md)
            logits = self.model.compute_logits(hidden)
        return {req: logits[query_start_loc[i]:query_start_loc[i + 1]] for i, (req, _) in enumerate(batch)}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """These tests run on small shared CPU boxes; when cores are oversubscribed every OpenMP barrier
    (SDPA, copy_) stalls for a scheduler slice, making a 135M decode step 10x slower than one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def paged_driver() -> type[PagedDriver]:
    return PagedDriver


def save_tiny_hf_model(config_cls: type, out_dir: Path, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random-weight HF causal LM saved as safetensors; returns the HF model (float32, eval)."""
    from transformers import AutoModelForCausalLM

    config = config_cls(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # HF's init zeroes biases; randomise them so bias handling is actually tested
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir)
    return model


@pytest.fixture(scope="session")
def save_tiny() -> Callable[..., torch.nn.Module]:
    return save_tiny_hf_model
