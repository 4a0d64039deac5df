"""Speculation fixtures: random speculator checkpoints and a tiny-vocabulary model for statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specserve.spec.checkpoint import save_mlp_speculator
from specserve.spec.medusa import MedusaConfig, MedusaHeads, save_medusa
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig


@pytest.fixture(scope="session")
def random_mlp_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle) -> Path:
    arch = tiny_bundle.arch
    config = MLPSpeculatorConfig(emb_dim=arch.hidden_size, vocab_size=arch.vocab_size, n_predict=3,
                                 inner_dim=32, top_k_tokens_per_head=(3, 2, 2), n_candidates=4)
    model = MLPSpeculator(config)
    model.reset_parameters(torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("mlp-spec")
    save_mlp_speculator(model, out)
    return out


@pytest.fixture(scope="session")
def random_tied_mlp_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle) -> Path:
    """Tied weights (IBM's tie_weights), so proposals may run past n_predict by repeating a stage."""
    arch = tiny_bundle.arch
    config = MLPSpeculatorConfig(emb_dim=arch.hidden_size, vocab_size=arch.vocab_size, n_predict=2,
                                 tie_weights=True, scale_input=True, top_k_tokens_per_head=(2, 2),
                                 n_candidates=3, num_lookahead_tokens=4)
    model = MLPSpeculator(config)
    model.reset_parameters(torch.Generator().manual_seed(2))
    out = tmp_path_factory.mktemp("tied-mlp-spec")
    save_mlp_speculator(model, out)
    return out


@pytest.fixture(scope="session")
def random_medusa_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle) -> Path:
    arch = tiny_bundle.arch
    torch.manual_seed(1)
    model = MedusaHeads(MedusaConfig(hidden_size=arch.hidden_size, vocab_size=arch.vocab_size, num_heads=2,
                                     top_k_tokens_per_head=(3, 2), n_candidates=3))
    for head in model.heads:
        torch.nn.init.normal_(head.block.weight, std=0.1)
    out = tmp_path_factory.mktemp("medusa")
    save_medusa(model, out)
    return out


@pytest.fixture(scope="session")
def small_vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama over a 24-word vocabulary with a word-level tokenizer (for sampling statistics)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig

    words = ["<eos>"] + [f"w{i}" for i in range(23)]
    out = tmp_path_factory.mktemp("small-vocab")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(words), max_position_embeddings=128,
                         eos_token_id=0, bos_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # sharpen the output so distributions are far from uniform
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)
    return out
