"""Tiny random checkpoints for the tensor-parallel tests (a word-level tokenizer, no default model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tp_helpers import VOCAB, write_word_tokenizer

SHAPE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 256, "eos_token_id": 0,
         "bos_token_id": 1}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save(config: object, out: Path, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # non-zero biases and norms, so their sharding (or replication) is tested
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out, safe_serialization=True)
    write_word_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def tp_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama with GQA (4 query heads, 2 KV heads) and an untied LM head."""
    from transformers import LlamaConfig

    return _save(LlamaConfig(**SHAPE, tie_word_embeddings=False), tmp_path_factory.mktemp("tp-llama"), 0)


@pytest.fixture(scope="session")
def tp_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2: q/k/v biases (split with their rows) and a tied LM head (the vocabulary-parallel embedding)."""
    from transformers import Qwen2Config

    return _save(Qwen2Config(**SHAPE, tie_word_embeddings=True), tmp_path_factory.mktemp("tp-qwen2"), 1)


def _bigcode(out: Path, seed: int, **overrides: object) -> Path:
    from transformers import GPTBigCodeConfig

    config = GPTBigCodeConfig(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256, vocab_size=VOCAB,
                              bos_token_id=1, eos_token_id=0, **overrides)
    config.architectures = ["GPTBigCodeForCausalLM"]
    return _save(config, out, seed)


@pytest.fixture(scope="session")
def tp_bigcode_mqa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-query GPTBigCode (one KV head, replicated on both ranks), tied head."""
    return _bigcode(tmp_path_factory.mktemp("tp-bigcode-mqa"), 2, multi_query=True)


@pytest.fixture(scope="session")
def tp_bigcode_mha_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Multi-head GPTBigCode (c_attn interleaved per head), untied head, exact GELU."""
    return _bigcode(tmp_path_factory.mktemp("tp-bigcode-mha"), 3, multi_query=False, tie_word_embeddings=False,
                    activation_function="gelu")
