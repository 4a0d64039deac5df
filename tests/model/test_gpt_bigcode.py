"""GPTBigCode (StarCoder, Granite code) against transformers, through the paged cache and the engine,
with and without speculation, including an IBM-format accelerator for a GPTBigCode base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GPTBigCodeConfig

from specserve import LLM, SamplingParams
from specserve.model import ModelArchConfig, load_model, resolve_model_dir
from specserve.spec.checkpoint import save_mlp_speculator
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.tokenizer import Tokenizer

CPU = torch.device("cpu")
RTOL = 1e-4
TINY = dict(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=256, vocab_size=256,
            bos_token_id=0, eos_token_id=1)
CASES: dict[str, dict[str, Any]] = {
    "mqa": dict(multi_query=True),
    "mha_exact_gelu": dict(multi_query=False, activation_function="gelu"),
    "mqa_untied_unscaled": dict(multi_query=True, tie_word_embeddings=False, scale_attn_weights=False,
                                activation_function="gelu_new"),
}


def save_tiny_bigcode(out: Path, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random GPTBigCode saved as safetensors (biases and LayerNorms randomised too)."""
    config = GPTBigCodeConfig(**{**TINY, **overrides})
    config.architectures = ["GPTBigCodeForCausalLM"]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return model


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).abs().max() / ref.abs().max())


def reference_logits(hf: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([tokens])).logits[0].float()


@pytest.fixture(scope="module", params=sorted(CASES))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[torch.nn.Module, torch.nn.Module]:
    out = tmp_path_factory.mktemp(request.param)
    hf = save_tiny_bigcode(out, **CASES[request.param])
    ours, arch = load_model(out, torch.float32, CPU)
    assert arch.architecture == "GPTBigCodeForCausalLM"
    return hf, ours


def test_prefill_matches_hf(models: tuple[torch.nn.Module, torch.nn.Module], paged_driver: type[Any]) -> None:
    hf, ours = models
    g = torch.Generator().manual_seed(1)
    for length in (40, 12):  # the per-request path and the batched path
        seq = torch.randint(0, 256, (length,), generator=g).tolist()
        logits = paged_driver(ours).step([("a", seq)])["a"]
        assert rel_err(logits, reference_logits(hf, seq)) <= RTOL


def test_prefill_and_decode_mixed_with_second_request(models: tuple[torch.nn.Module, torch.nn.Module],
                                                      paged_driver: type[Any]) -> None:
    hf, ours = models
    g = torch.Generator().manual_seed(2)
    seqs = {"a": torch.randint(0, 256, (17,), generator=g).tolist(),
            "b": torch.randint(0, 256, (12,), generator=g).tolist()}
    ref = {req: reference_logits(hf, seq) for req, seq in seqs.items()}
    driver = paged_driver(ours, seed=3)
    plan = [  # (request, start, end): prefill chunks, then a decodes while b prefills, then both decode
        [("a", 0, 13), ("b", 0, 5)],
        [("b", 5, 9), ("a", 13, 14)],
        [("a", 14, 15), ("b", 9, 10)],
        [("b", 10, 11), ("a", 15, 16)],
        [("a", 16, 17), ("b", 11, 12)],
    ]
    for step in plan:
        out = driver.step([(req, seqs[req][start:end]) for req, start, end in step])
        for req, start, end in step:
            assert rel_err(out[req], ref[req][start:end]) <= RTOL, (req, start, end)
    assert driver.blocks["a"] != sorted(driver.blocks["a"])  # shuffled, interleaved blocks


def test_arch_fields(models: tuple[torch.nn.Module, torch.nn.Module]) -> None:
    hf, ours = models
    arch: ModelArchConfig = ours.arch
    cfg = hf.config
    assert (arch.model_type, arch.num_layers, arch.hidden_size) == ("gpt_bigcode", cfg.n_layer, cfg.n_embd)
    assert arch.num_kv_heads == (1 if cfg.multi_query else cfg.n_head)
    assert arch.head_dim == cfg.n_embd // cfg.n_head and arch.intermediate_size == cfg.n_inner
    assert arch.max_position_embeddings == cfg.n_positions and arch.vocab_size == cfg.vocab_size
    assert arch.eos_token_ids == [1] and arch.bos_token_id == 0
    assert arch.tie_word_embeddings == cfg.tie_word_embeddings
    assert arch.attn_scale == (arch.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0)
    if arch.tie_word_embeddings:
        assert ours.get_output_embeddings() is ours.get_input_embeddings().weight


def test_defaults_and_rejections() -> None:
    arch = ModelArchConfig.from_hf_config({"model_type": "gpt_bigcode"})  # transformers' defaults
    assert (arch.architecture, arch.hidden_size, arch.num_kv_heads, arch.intermediate_size) == (
        "GPTBigCodeForCausalLM", 768, 1, 3072)
    assert arch.max_position_embeddings == 1024 and arch.eos_token_ids == [50256] and arch.tie_word_embeddings
    with pytest.raises(ValueError, match="activation_function"):
        ModelArchConfig.from_hf_config({"model_type": "gpt_bigcode", "activation_function": "relu"})
    with pytest.raises(ValueError, match="divisible"):
        ModelArchConfig.from_hf_config({"model_type": "gpt_bigcode", "n_embd": 65, "n_head": 4})


# ---- engine level: a tiny GPTBigCode with SmolLM2's tokenizer -------------------------------------

PROMPTS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "def fib",
    "import numpy as np\n\nx = np.",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Hello",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def bigcode_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    smollm = resolve_model_dir(None)  # the default model's folder, for its tokenizer files only
    tokenizer = Tokenizer.from_dir(smollm)
    out = tmp_path_factory.mktemp("tiny-bigcode")
    save_tiny_bigcode(out, vocab_size=tokenizer.vocab_size, n_positions=1024,
                      eos_token_id=tokenizer.eos_token_id, bos_token_id=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (smollm / name).exists():
            shutil.copy(smollm / name, out / name)
    return out


@pytest.fixture(scope="module")
def bigcode_bundle(bigcode_dir: Path):
    from specserve.engine.model_setup import load_bundle

    return load_bundle(str(bigcode_dir), "float32")


def greedy(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params)]


@pytest.fixture(scope="module")
def hf_reference(bigcode_dir: Path, bigcode_bundle) -> list[list[int]]:
    hf = AutoModelForCausalLM.from_pretrained(bigcode_dir, dtype=torch.float32).eval()
    outs = []
    with torch.inference_mode():  # plain argmax loop: no EOS handling to match ignore_eos
        for prompt in PROMPTS:
            ids = bigcode_bundle.tokenizer.encode(prompt)
            for _ in range(MAX_TOKENS):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
            outs.append(ids[-MAX_TOKENS:])
    return outs


@pytest.fixture(scope="module")
def ibm_accelerator_dir(tmp_path_factory: pytest.TempPathFactory, bigcode_bundle) -> Path:
    """IBM's accelerator layout as published for Granite-20B-code (4 stages, untied, `speculator.` key
    prefix, scale_input), with tiny random weights, written without our own save function."""
    arch = bigcode_bundle.arch
    emb_dim, inner, vocab, n_predict = arch.hidden_size, 48, arch.vocab_size, 4
    g = torch.Generator().manual_seed(5)
    tensors: dict[str, torch.Tensor] = {}
    for i in range(n_predict):
        tensors[f"speculator.emb.{i}.weight"] = torch.randn(vocab, inner, generator=g) * 0.1
        in_dim = emb_dim if i == 0 else inner
        tensors[f"speculator.proj.{i}.weight"] = torch.randn(inner, in_dim, generator=g) * 0.1
        tensors[f"speculator.head.{i}.weight"] = torch.randn(vocab, inner, generator=g) * 0.1
        tensors[f"speculator.ln.{i}.weight"] = 1 + torch.randn(inner, generator=g) * 0.1
        tensors[f"speculator.ln.{i}.bias"] = torch.randn(inner, generator=g) * 0.1
    out = tmp_path_factory.mktemp("ibm-accelerator")
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator",
        "emb_dim": emb_dim, "inner_dim": inner, "vocab_size": vocab, "n_predict": n_predict,
        "top_k_tokens_per_head": [4, 3, 2, 2], "n_candidates": 4, "tie_weights": False, "scale_input": True,
    }))
    return out


@pytest.fixture(scope="module")
def random_mlp_dir(tmp_path_factory: pytest.TempPathFactory, bigcode_bundle) -> Path:
    arch = bigcode_bundle.arch
    model = MLPSpeculator(MLPSpeculatorConfig(emb_dim=arch.hidden_size, vocab_size=arch.vocab_size,
                                              n_predict=3, inner_dim=32, top_k_tokens_per_head=(3, 2, 2),
                                              n_candidates=4))
    model.reset_parameters(torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("bigcode-mlp")
    save_mlp_speculator(model, out)
    return out


def test_engine_greedy_matches_transformers(bigcode_bundle, hf_reference) -> None:
    assert greedy(LLM(bundle=bigcode_bundle)) == hf_reference


@pytest.mark.parametrize("speculator", ["ngram", "mlp", "ibm"])
def test_speculation_is_lossless(bigcode_bundle, hf_reference, random_mlp_dir, ibm_accelerator_dir,
                                 speculator: str) -> None:
    spec = {"ngram": "ngram", "mlp": str(random_mlp_dir), "ibm": str(ibm_accelerator_dir)}[speculator]
    llm = LLM(bundle=bigcode_bundle, speculator=spec, speculation="on")
    assert greedy(llm) == hf_reference
    assert llm.stats()["spec_steps"] > 0
    if speculator == "ibm":
        proposer = llm.engine.runner.spec.proposer
        assert proposer.model.config.n_predict == 4 and proposer.model.ln0 is not None
        # one request alone too (speculation at batch 1 takes other padding paths)
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        assert list(llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids) == hf_reference[0]
