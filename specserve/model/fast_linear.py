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


def project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [rows, in] times weight [out, in]^T."""
    y = small_matmul(x, weight)
    return F.linear(x, weight) if y is None else y


class FastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = small_matmul(x, self.weight)
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
