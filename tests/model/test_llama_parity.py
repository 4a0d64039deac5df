"""Our Llama-family models vs transformers on the same random weights, through the paged KV cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GraniteConfig, LlamaConfig, MistralConfig, Qwen2Config

from specserve.model import ModelArchConfig, load_model

CPU = torch.device("cpu")
RTOL = 1e-4

CASES: dict[str, tuple[type, dict[str, Any]]] = {
    "llama": (LlamaConfig, {}),
    "llama_tied_bias": (LlamaConfig, dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "mistral": (MistralConfig, {}),
    "qwen2": (Qwen2Config, {}),
    "granite": (GraniteConfig, dict(embedding_multiplier=6.0, residual_multiplier=0.3,
                                    attention_multiplier=0.09, logits_scaling=4.0)),
    # original 32 puts head_dim 16's wavelengths in all three llama3 bands (kept, blended, scaled)
    "llama3_rope": (LlamaConfig, dict(rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32))),
    "linear_rope": (LlamaConfig, dict(rope_scaling=dict(rope_type="linear", factor=3.0))),
    "dynamic_rope": (LlamaConfig, dict(rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "yarn_rope": (LlamaConfig, dict(max_position_embeddings=64, rope_scaling=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=16))),
}


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module", params=sorted(CASES))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           save_tiny: Callable[..., torch.nn.Module]) -> tuple[torch.nn.Module, torch.nn.Module]:
    config_cls, overrides = CASES[request.param]
    out: Path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(config_cls, out, **overrides)
    ours, arch = load_model(out, torch.float32, CPU)
    assert arch.architecture == hf.config.architectures[0]
    return hf, ours


def reference_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


def sequences(vocab: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, vocab, (40,), generator=g).tolist(),
            torch.randint(0, vocab, (12,), generator=g).tolist())


def test_single_prefill_matches_hf(models: tuple[torch.nn.Module, torch.nn.Module],
                                   paged_driver: type[Any]) -> None:
    hf, ours = models
    long_seq, short_seq = sequences(ours.arch.vocab_size)
    for seq in (long_seq, short_seq):  # 40 tokens takes the per-request path, 12 the batched one
        logits = paged_driver(ours).step([("a", seq)])["a"]
        assert rel_err(logits, reference_logits(hf, seq)) <= RTOL


def test_chunked_prefill_and_decode_mixed_batch(models: tuple[torch.nn.Module, torch.nn.Module],
                                                paged_driver: type[Any]) -> None:
    hf, ours = models
    seq_a, seq_b = sequences(ours.arch.vocab_size)
    seq_a = seq_a[:17]
    ref = {"a": reference_logits(hf, seq_a), "b": reference_logits(hf, seq_b)}
    driver = paged_driver(ours, seed=3)
    # (request, start, end) per step: prefill chunks of both, then a decoding while b finishes
    # its prompt, then both decoding token by token.
    plan = [
        [("a", 0, 13), ("b", 0, 5)],
        [("b", 5, 9), ("a", 13, 14)],
        [("a", 14, 15), ("b", 9, 10)],
        [("b", 10, 11), ("a", 15, 16)],
        [("a", 16, 17), ("b", 11, 12)],
    ]
    seqs = {"a": seq_a, "b": seq_b}
    for step in plan:
        out = driver.step([(req, seqs[req][start:end]) for req, start, end in step])
        for req, start, end in step:
            assert rel_err(out[req], ref[req][start:end]) <= RTOL, (req, start, end)
    # the cache really is out of order and interleaved between the two requests
    assert driver.blocks["a"] != sorted(driver.blocks["a"])


def test_arch_config_fields(models: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    hf, ours = models
    arch: ModelArchConfig = ours.arch
    assert arch.num_layers == hf.config.num_hidden_layers
    assert arch.head_dim == hf.config.hidden_size // hf.config.num_attention_heads
    assert arch.tie_word_embeddings == hf.config.tie_word_embeddings
    if arch.tie_word_embeddings:
        assert ours.get_output_embeddings() is ours.get_input_embeddings().weight
    if arch.model_type == "granite":
        assert arch.attn_scale == pytest.approx(0.09) and arch.logits_scaling == 4.0


def test_bfloat16_load_runs_close(tmp_path: Path, save_tiny: Callable[..., torch.nn.Module],
                                  paged_driver: type[Any]) -> None:
    hf = save_tiny(LlamaConfig, tmp_path)
    ours, _ = load_model(tmp_path, torch.bfloat16, CPU)
    assert ours.get_input_embeddings().weight.dtype == torch.bfloat16
    seq = sequences(256)[1]
    logits = paged_driver(ours).step([("a", seq)])["a"]
    assert logits.dtype == torch.float32
    assert rel_err(logits, reference_logits(hf, seq)) <= 5e-2


@pytest.mark.parametrize("bad, message", [
    ({"hidden_size": None}, "hidden_size"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 2.0}}, "longrope"),
    ({"architectures": None, "model_type": "bert"}, "model_type"),
    ({"vocab_size": -1}, "vocab_size"),
])
def test_arch_config_rejects_bad_fields(bad: dict[str, Any], message: str) -> None:
    config = LlamaConfig(hidden_size=64, num_attention_heads=4).to_dict()
    config["architectures"] = ["LlamaForCausalLM"]
    if "rope_scaling" in bad:
        config.pop("rope_parameters")  # the old-style key is only read when the new one is absent
    for key, value in bad.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with pytest.raises(ValueError, match=message):
        ModelArchConfig.from_hf_config(config)


def test_eos_ids_merge_generation_config() -> None:
    config = dict(architectures=["LlamaForCausalLM"], hidden_size=64, num_hidden_layers=1,
                  num_attention_heads=4, intermediate_size=96, vocab_size=256, eos_token_id=2)
    arch = ModelArchConfig.from_hf_config(config, {"eos_token_id": [7, 2]})
    assert arch.eos_token_ids == [2, 7]
