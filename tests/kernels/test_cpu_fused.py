"""cpu_fused.c against the PyTorch ops it replaces (model/layers.py's fallbacks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from specserve.attention.paged import write_kv
from specserve.kernels import build, cpu_fused
from specserve.model.arch_config import RopeConfig
from specserve.model.layers import RotaryEmbedding, apply_rope

pytestmark = pytest.mark.skipif(build.load_library() is None, reason="no AVX-512 CPU or no gcc here")
DTYPES = [torch.float32, torch.bfloat16]


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    # bfloat16: one unit in the last place (2^-8 relative) for a different order of float32 sums
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5])
def test_add_rms_norm(dtype, rows):
    gen = torch.Generator().manual_seed(rows)
    x, h = (torch.randn(rows, 576, generator=gen).to(dtype) for _ in range(2))
    weight = (1 + 0.1 * torch.randn(576, generator=gen)).to(dtype)
    total, normed = cpu_fused.add_rms_norm(x, h, weight, 1e-5)
    expected_total = x + h
    assert torch.equal(total, expected_total)  # the add rounds exactly as PyTorch's does
    ref = weight * F.rms_norm(expected_total.float(), (576,), eps=1e-5).to(dtype)
    torch.testing.assert_close(normed.float(), ref.float(), **tolerance(dtype))
    only_x, normed_x = cpu_fused.add_rms_norm(x, None, weight, 1e-5)
    assert only_x is x
    ref_x = weight * F.rms_norm(x.float(), (576,), eps=1e-5).to(dtype)
    torch.testing.assert_close(normed_x.float(), ref_x.float(), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_write_kv(dtype):
    gen = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, tokens = 9, 3, 64, 4
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, generator=gen).to(dtype)
    rotary = RotaryEmbedding(RopeConfig(theta=10000.0), dim, 2048)
    cos, sin = rotary(torch.tensor([0, 7, 300, 2047]), dtype)
    slots = torch.tensor([5, 0, 17, 9])
    caches = [torch.zeros(4, 8, kv_heads, dim, dtype=dtype) for _ in range(4)]
    q = cpu_fused.rope_write_kv(qkv, cos, sin, caches[0], caches[1], slots, heads, kv_heads, dim)
    assert q is not None
    qk = apply_rope(qkv[:, :(heads + kv_heads) * dim].view(tokens, heads + kv_heads, dim), cos, sin)
    v = qkv[:, (heads + kv_heads) * dim:].view(tokens, kv_heads, dim)
    write_kv(qk[:, heads:], v, caches[2], caches[3], slots)
    torch.testing.assert_close(q.float(), qk[:, :heads].float(), **tolerance(dtype))
    torch.testing.assert_close(caches[0].float(), caches[2].float(), **tolerance(dtype))
    assert torch.equal(caches[1], caches[3])  # v is copied as is
    untouched = torch.ones(32, dtype=torch.bool)
    untouched[slots] = False
    assert not caches[0].view(32, -1)[untouched].any()  # nothing written outside the slots


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    gen = torch.Generator().manual_seed(2)
    gate_up = (4 * torch.randn(3, 2 * 1536, generator=gen)).to(dtype)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dtype)  # saturation at both ends
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(cpu_fused.silu_mul(gate_up).float(), (F.silu(gate) * up).float(),
                               **tolerance(dtype))


def test_declines_where_it_does_not_apply():
    assert cpu_fused.silu_mul(torch.randn(2, 40)) is None  # not a multiple of 32
    assert cpu_fused.silu_mul(torch.randn(2, 64, dtype=torch.float64)) is None
    assert cpu_fused.silu_mul(torch.randn(2, 64, requires_grad=True)) is None
    assert cpu_fused.add_rms_norm(torch.randn(2, 24), None, torch.ones(24), 1e-5) is None
    assert cpu_fused.add_rms_norm(torch.randn(2, 32).t(), None, torch.ones(2), 1e-5) is None  # strided
