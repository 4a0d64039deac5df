"""Linear layers that send few-row products on CPU to the hand-written kernel (kernels/cpu_gemm.c).

Decode and speculative verification multiply 1-8 rows by every weight matrix; there the kernel
streams the weights about twice as fast as F.linear on the target EPYC. Everything else (prefill,
large batches, CUDA, autograd) keeps F.linear, so results differ only in summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specserve.kernels.cpu_gemm import small_matmul


def _small_matmul_nd(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    if x.dim() <= 2:
        return small_matmul(x, weight)
    y = small_matmul(x.reshape(-1, x.shape[-1]), weight)  # e.g. [requests, paths, in]
    return None if y is None else y.view(*x.shape[:-1], weight.shape[0])


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., in] times weight [out, in]^T."""
    y = _small_matmul_nd(x, weight)
    return F.linear(x, weight) if y is None else y


class FastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _small_matmul_nd(x, self.weight)
        if y is None:
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y.add_(self.bias)


def enable_fast_linear(model: nn.Module) -> int:
    """Turn every plain nn.Linear of ``model`` into a FastLinear (no copies); returns how many."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
            count += 1
    return count
