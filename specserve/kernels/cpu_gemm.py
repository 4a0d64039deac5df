"""Few-row CPU matrix products (cpu_gemm.c): ``small_matmul(x, weight)`` = x @ weight.T, or None.

The kernel applies on CPU to float32 or bfloat16 products of 1..MAX_ROWS[dtype] rows outside autograd;
everywhere else the function returns None and callers use F.linear.
"""

from __future__ import annotations

from typing import Any

import torch

from specserve.kernels.build import loaded

# Up to this many rows the kernel beat F.linear over all of the default model's weights, two threads
# (`python -m specserve.kernels.bench_gemm`, benchmarks/results/bench_gemm.txt): float32 1.4-3.7x at
# 1-64 rows; bfloat16 1.9-2.2x at 1-8 rows, 1.1x at 16-24, even at 32-48 and 0.89x at 64, where
# oneDNN's blocked GEMM wins.
MAX_ROWS = {torch.float32: 64, torch.bfloat16: 24}


def run_gemm(fn: Any, x: torch.Tensor, weights: torch.Tensor, out_features: int,
             threads: int | None = None) -> torch.Tensor:
    """Call one of the kernels' GEMM entry points (plain or packed ``weights``): x [M, K] -> [M, N]."""
    x = x.contiguous()
    y = torch.empty(x.shape[0], out_features, dtype=x.dtype)
    fn(x.data_ptr(), weights.data_ptr(), y.data_ptr(), x.shape[0], out_features, x.shape[1],
       threads or torch.get_num_threads())
    return y


def small_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """x [M, K] @ weight[N, K].T with the CPU kernel, or None where it does not apply."""
    if (x.device.type != "cpu" or x.dim() != 2 or not 0 < x.shape[0] <= MAX_ROWS.get(x.dtype, 0)
            or x.dtype != weight.dtype or weight.dim() != 2 or x.shape[1] != weight.shape[1]
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return None
    kernels = loaded()
    if kernels is None:
        return None
    if x.dtype == torch.float32:
        fn = kernels.gemm_f32
    elif x.dtype == torch.bfloat16:
        fn = kernels.gemm_bf16
    else:
        return None
    if fn is None or not weight.is_contiguous():
        return None
    return run_gemm(fn, x, weight, weight.shape[0])


# Row counts for which the panel-packed kernel (cpu_gemm_packed.c) is used where a packed copy exists:
# `bench_gemm` (benchmarks/results/bench_gemm.txt) has it 2.1-3.9x F.linear in float32 at 4-128 rows,
# 1.5x at 256; in bfloat16 level with the row kernel up to 8 rows, then 1.4-1.8x F.linear at 16-64 rows,
# 1.16x at 128 and even at 256. From one row on: in whole-model decode (three alternating runs each)
# it beat the row kernel at 1 row, float32 33-40 against 27-29 tok/s, bfloat16 50-52 against 44-56.
PACKED_MIN_ROWS = {torch.float32: 1, torch.bfloat16: 1}
PACKED_MAX_ROWS = {torch.float32: 256, torch.bfloat16: 128}


def pack_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """A panel-packed copy of weight [N, K] for packed_matmul, or None where the kernel does not apply."""
    kernels = loaded()
    if kernels is None or weight.device.type != "cpu" or weight.dim() != 2 or not weight.is_contiguous():
        return None
    n, k = weight.shape
    panels = (n + 15) // 16
    with torch.no_grad():
        if weight.dtype == torch.float32:
            packed = torch.empty(panels * k * 16)
            kernels.pack_f32(weight.data_ptr(), packed.data_ptr(), n, k)
        elif weight.dtype == torch.bfloat16 and kernels.gemm_packed_bf16 is not None:
            packed = torch.empty(panels * ((k + 1) // 2) * 32, dtype=torch.bfloat16)
            kernels.pack_bf16(weight.data_ptr(), packed.data_ptr(), n, k)
        else:
            return None
    return packed


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor | None:
    """x [M, K] @ W.T from W's packed copy, for PACKED_MIN_ROWS..PACKED_MAX_ROWS rows; else None."""
    if (x.device.type != "cpu" or x.dim() != 2 or x.dtype not in PACKED_MIN_ROWS
            or not PACKED_MIN_ROWS[x.dtype] <= x.shape[0] <= PACKED_MAX_ROWS[x.dtype] or x.dtype != packed.dtype or (torch.is_grad_enabled() and x.requires_grad)):
        return None
    kernels = loaded()
    if kernels is None:
        return None
    fn = kernels.gemm_packed_f32 if x.dtype == torch.float32 else kernels.gemm_packed_bf16
    if fn is None:
        return None
    return run_gemm(fn, x, packed, out_features)
