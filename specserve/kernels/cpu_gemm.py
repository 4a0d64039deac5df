"""Few-row CPU matrix products (cpu_gemm.c): ``small_matmul(x, weight)`` = x @ weight.T, or None.

The kernel applies on CPU to float32 or bfloat16 products of 1..MAX_ROWS[dtype] rows outside autograd;
everywhere else the function returns None and callers use F.linear.
"""

from __future__ import annotations

import torch

from specserve.kernels.build import loaded

# Up to this many rows the kernel beat F.linear over all of the default model's weights, two threads
# (`python -m specserve.kernels.bench_gemm`, benchmarks/results/bench_gemm.txt): float32 1.4-3.7x at
# 1-64 rows; bfloat16 1.9-2.2x at 1-8 rows, 1.1x at 16-24, even at 32-48 and 0.89x at 64, where
# oneDNN's blocked GEMM wins.
MAX_ROWS = {torch.float32: 64, torch.bfloat16: 24}


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
    x = x.contiguous()
    rows, k = x.shape
    n = weight.shape[0]
    y = torch.empty(rows, n, dtype=x.dtype)
    fn(x.data_ptr(), weight.data_ptr(), y.data_ptr(), rows, n, k, torch.get_num_threads())
    return y
