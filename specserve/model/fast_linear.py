"""Linear layers that send few-row products on CPU to the hand-written kernels (kernels/cpu_gemm*.c).

Decode, batched decode and speculative verification multiply 1-256 rows by every weight matrix. On the
target EPYC a panel-packed copy of the weights (cpu_gemm_packed.c: register-blocked, read as 2 streams)
is fastest from one row on; without a copy (large models) rows stream from nn.Linear's own layout
(cpu_gemm.c), still about twice F.linear's speed. The packed copy costs memory (one more copy of every Linear weight), so it is made
only for models whose Linear weights fit in PACK_MAX_BYTES. Prefill beyond 128 rows, CUDA and autograd
keep F.linear (and beyond 256 / 128 rows); results differ from it only in summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from specserve.kernels.cpu_gemm import pack_weight, packed_matmul, small_matmul

PACK_MAX_BYTES = 2 * 1024**3


def _kernel_matmul(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor | None:
    flat = x if x.dim() <= 2 else x.reshape(-1, x.shape[-1])  # e.g. [requests, paths, in]
    y = None
    if packed is not None and not (torch.is_grad_enabled() and weight.requires_grad):  # autograd: F.linear
        y = packed_matmul(flat, packed, weight.shape[0])
    if y is None:
        y = small_matmul(flat, weight)
    if y is None or x.dim() <= 2:
        return y
    return y.view(*x.shape[:-1], weight.shape[0])


def project(x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] times weight [out, in]^T (``packed``: pack_weight(weight), if made)."""
    y = _kernel_matmul(x, weight, packed)
    return F.linear(x, weight) if y is None else y


class FastLinear(nn.Linear):
    packed: torch.Tensor | None = None  # panel-packed copy of weight (kernels/cpu_gemm_packed.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _kernel_matmul(x, self.weight, self.packed)
        if y is None:
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y.add_(self.bias)


def enable_fast_linear(model: nn.Module, pack: bool = True) -> int:
    """Turn every plain nn.Linear of ``model`` into a FastLinear; returns how many. With ``pack``, also
    give each (and the output head, as ``model.packed_head``) a panel-packed copy, if the model's Linear
    weights fit in PACK_MAX_BYTES. Call it after the weights are loaded: the copies are not refreshed."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    pack = pack and size <= PACK_MAX_BYTES
    packed_by_weight: dict[tuple[int, torch.dtype, tuple[int, ...]], torch.Tensor | None] = {}
    for module in linears:
        module.__class__ = FastLinear
        if pack:
            # Tied layers (a speculator's stages share one head) share one packed copy: less memory,
            # and the later stages read it from cache instead of from DRAM.
            key = (module.weight.data_ptr(), module.weight.dtype, tuple(module.weight.shape))
            if key not in packed_by_weight:
                packed_by_weight[key] = pack_weight(module.weight.detach())
            module.packed = packed_by_weight[key]
    if pack and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
        head = head if isinstance(head, torch.Tensor) else head.weight
        model.packed_head = pack_weight(head.detach())
    if hasattr(model, "attach_cpu_decoder"):
        model.attach_cpu_decoder()  # the one-call decoder needs the packed copies
    return len(linears)
