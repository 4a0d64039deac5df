"""Fixtures for model tests: tiny random HF checkpoints and a paged-KV driver for our models."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
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


def _llama_cpp_permute(w: np.ndarray, num_heads: int) -> np.ndarray:
    # What llama.cpp's convert_hf_to_gguf does to q/k rows of llama models (pairs rope halves).
    return w.reshape(num_heads, 2, w.shape[0] // num_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(hf_model: torch.nn.Module, path: Path, arch: str) -> None:
    """Write an HF tiny model as a float32 GGUF the way llama.cpp would (names, q/k permutation for
    llama, byte-level BPE vocabulary) so the import is tested independently of transformers' reader."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    cfg = hf_model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    # byte-level BPE over the 256 bytes; byte 0xFF (never in UTF-8) gives its slot to one merge
    tokens = [bytes_to_unicode()[b] for b in range(255)] + ["he"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * 256)
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.add_chat_template("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}")
    model_arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[arch]
    names = gguf.get_tensor_name_map(model_arch, cfg.num_hidden_layers)
    for hf_name, tensor in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = hf_name.rsplit(".", 1)
        w = tensor.float().numpy()
        if arch == "llama" and base.endswith("q_proj"):
            w = _llama_cpp_permute(w, cfg.num_attention_heads)
        elif arch == "llama" and base.endswith("k_proj"):
            w = _llama_cpp_permute(w, cfg.num_key_value_heads)
        writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def tiny_gguf() -> Callable[[torch.nn.Module, Path, str], None]:
    return write_tiny_gguf
