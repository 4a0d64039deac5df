"""The few-row CPU kernel against F.linear (kernels/cpu_gemm.c)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specserve.kernels import build, cpu_gemm
from specserve.model.fast_linear import FastLinear, enable_fast_linear, project

pytestmark = pytest.mark.skipif(build.load_library() is None, reason="no AVX-512 CPU or no gcc here")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 16, 19, 64])
@pytest.mark.parametrize("n,k", [(37, 576), (64, 17), (130, 1536), (3, 100)])
def test_float32_matches_f_linear(rows, n, k, threads):
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    got = cpu_gemm.small_matmul(x, w)
    assert got is not None and got.shape == (rows, n) and got.dtype == torch.float32
    ref = (x.double() @ w.double().T).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(build.load_library() is None or build.load_library().gemm_bf16 is None,
                    reason="CPU lacks AVX512-BF16")
@pytest.mark.parametrize("rows", [1, 3, 4, 8, 16, 21])
@pytest.mark.parametrize("n,k", [(37, 576), (64, 40), (130, 1536)])
def test_bfloat16_matches_float32_reference(rows, n, k, threads):
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(rows, k, generator=gen).bfloat16()
    w = torch.randn(n, k, generator=gen).bfloat16()
    got = cpu_gemm.small_matmul(x, w)
    assert got is not None and got.dtype == torch.bfloat16
    exact = x.double() @ w.double().T  # products of bf16 values are exact in float32
    # one rounding to bfloat16 at the end: relative error 2^-8, plus float32 summation noise
    torch.testing.assert_close(got.double(), exact, rtol=2 ** -8, atol=1e-3 * k ** 0.5)
    # and as close to PyTorch's own bf16 product as two roundings allow
    torch.testing.assert_close(got.float(), F.linear(x, w).float(), rtol=2 ** -7, atol=2e-3 * k ** 0.5)


def test_declines_where_it_does_not_apply():
    w = torch.randn(16, 32)
    assert cpu_gemm.small_matmul(torch.randn(cpu_gemm.MAX_ROWS[torch.float32] + 1, 32), w) is None  # GEMM's regime
    assert cpu_gemm.small_matmul(torch.randn(2, 32, dtype=torch.float64), w.double()) is None
    assert cpu_gemm.small_matmul(torch.randn(2, 32), w.t().contiguous().t()) is None  # non-contiguous weight
    assert cpu_gemm.small_matmul(torch.randn(2, 32, requires_grad=True), w) is None  # autograd needs F.linear
    assert cpu_gemm.small_matmul(torch.randn(2, 3, 32), w) is None
    with pytest.raises(RuntimeError):
        project(torch.randn(2, 31), w)  # shape errors still come from F.linear, not a crash in C


def test_fast_linear_modules_keep_outputs_and_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 8, bias=False))
    x = torch.randn(3, 48)
    before = model(x)
    assert enable_fast_linear(model) == 2
    assert all(type(m) is FastLinear for m in (model[0], model[2]))
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    model(x).sum().backward()  # training still works: autograd falls back to F.linear
    assert model[0].weight.grad is not None
    big = torch.randn(80, 48)  # beyond MAX_ROWS: F.linear
    with torch.no_grad():
        torch.testing.assert_close(model(big), F.linear(F.relu(F.linear(big, model[0].weight, model[0].bias)),
                                                        model[2].weight))


def test_tied_linears_share_one_packed_copy():
    # A speculator's stages share one head weight: one packed copy serves them all, and untied
    # layers of the same shape still get their own.
    first, tied, other = nn.Linear(48, 40, bias=False), nn.Linear(48, 40, bias=False), nn.Linear(48, 40, bias=False)
    tied.weight = first.weight
    model = nn.ModuleList([first, tied, other])
    enable_fast_linear(model)
    assert first.packed is not None and tied.packed is first.packed and other.packed is not first.packed
    x = torch.randn(2, 48)
    with torch.no_grad():
        torch.testing.assert_close(tied(x), F.linear(x, first.weight), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other(x), F.linear(x, other.weight), rtol=1e-5, atol=1e-5)


def test_library_is_cached_by_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSERVE_HOME", str(tmp_path))
    first = build.build_library()
    mtime = first.stat().st_mtime_ns
    assert build.build_library() == first and first.stat().st_mtime_ns == mtime
    assert first.parent == tmp_path / "kernels"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 12, 13, 17, 20, 21, 64, 128])  # every tile shape (cpu_gemm_packed.c)
@pytest.mark.parametrize("n,k", [(37, 576), (16, 33), (130, 1536)])
def test_packed_kernel_matches_exact_product(dtype, rows, n, k, threads):
    if dtype == torch.bfloat16 and build.load_library().gemm_packed_bf16 is None:
        pytest.skip("CPU lacks AVX512-BF16")
    gen = torch.Generator().manual_seed(rows * 1000 + n + k)
    x, w = torch.randn(rows, k, generator=gen).to(dtype), torch.randn(n, k, generator=gen).to(dtype)
    got = cpu_gemm.packed_matmul(x, cpu_gemm.pack_weight(w), n)
    assert got is not None and got.shape == (rows, n) and got.dtype == dtype
    exact = x.double() @ w.double().T
    if dtype == torch.float32:  # one float32 accumulator per output, summed along k in order
        torch.testing.assert_close(got.double(), exact, rtol=1e-4, atol=1e-4)
    else:  # plus one rounding to bfloat16
        torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=1e-3 * k ** 0.5)


def test_fast_linear_uses_the_packed_copy_and_matches():
    torch.manual_seed(1)
    layer = nn.Linear(96, 50)
    x = torch.randn(16, 96)
    before = layer(x).detach()
    enable_fast_linear(layer)
    assert layer.packed is not None
    with torch.no_grad():
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
        layer.packed.zero_()  # proof that the packed copy is what is read
        torch.testing.assert_close(layer(x), layer.bias.expand(16, 50))
        torch.testing.assert_close(layer(x[:1]), layer.bias.expand(1, 50))
        big = torch.randn(cpu_gemm.PACKED_MAX_ROWS[torch.float32] + 1, 96)  # beyond it: F.linear, the weight
        torch.testing.assert_close(layer(big), F.linear(big, layer.weight, layer.bias))
