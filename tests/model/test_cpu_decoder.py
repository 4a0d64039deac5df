"""The one-call CPU decoder (model/cpu_decoder.py) against the per-layer module path: bit-identical
hidden states and KV caches, and the module path wherever the decoder does not apply."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from specserve.kernels import build
from specserve.model import cpu_decoder as cpu_decoder_module
from specserve.model import load_model
from specserve.model.fast_linear import enable_fast_linear

pytestmark = pytest.mark.skipif(build.load_library() is None, reason="no AVX-512 CPU or no gcc here")

# head_dim 32 (the kernel needs multiples of 32), grouped-query attention with 2 heads per KV head.
SHAPE = dict(hidden_size=128, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, save_tiny: Callable[..., torch.nn.Module]) -> Path:
    out = tmp_path_factory.mktemp("decoder")
    save_tiny(LlamaConfig, out, **SHAPE)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoder_matches_module_path_exactly(checkpoint: Path, paged_driver, dtype: torch.dtype,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    if dtype == torch.bfloat16 and build.load_library().gemm_packed_bf16 is None:
        pytest.skip("no AVX512-BF16")
    model, _ = load_model(checkpoint, dtype, torch.device("cpu"))
    enable_fast_linear(model)
    decoder = model.cpu_decoder
    assert decoder is not None
    used = []
    run = decoder.run

    def counting_run(*args, **kwargs):
        out = run(*args, **kwargs)
        used.append(out is not None)
        return out

    monkeypatch.setattr(decoder, "run", counting_run)
    fast, slow = paged_driver(model, seed=3), paged_driver(model, seed=3)
    gen = torch.Generator().manual_seed(0)
    tokens = lambda n: torch.randint(0, 256, (n,), generator=gen).tolist()  # noqa: E731
    steps = [[("a", tokens(40))],  # a long prefill: the module path
             [("a", tokens(1)), ("b", tokens(12))],  # a decode token and a short prefill: the decoder
             *[[("a", tokens(1)), ("b", tokens(1))] for _ in range(6)],
             [("b", tokens(3)), ("c", tokens(5))]]  # a new request beside a 3-token run
    for batch in steps:
        fast_out = fast.step(batch)
        model.cpu_decoder = None
        slow_out = slow.step(batch)
        model.cpu_decoder = decoder
        for req in fast_out:
            assert torch.equal(fast_out[req], slow_out[req]), (batch, req)
    assert used == [False] + [True] * (len(steps) - 1)
    for (k1, v1), (k2, v2) in zip(fast.kv_caches, slow.kv_caches):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_decoder_declines_unsupported_models(tmp_path: Path, save_tiny: Callable[..., torch.nn.Module],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny(LlamaConfig, tmp_path / "biased", attention_bias=True, **SHAPE)
    model, _ = load_model(tmp_path / "biased", torch.float32, torch.device("cpu"))
    enable_fast_linear(model)
    assert model.cpu_decoder is None  # biases: the module path
    save_tiny(LlamaConfig, tmp_path / "plain", **SHAPE)
    model, _ = load_model(tmp_path / "plain", torch.float32, torch.device("cpu"))
    monkeypatch.setattr(cpu_decoder_module, "ENABLED", False)
    enable_fast_linear(model)
    assert model.cpu_decoder is None  # switched off
