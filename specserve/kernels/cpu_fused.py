"""Python entry points of cpu_fused.c. Each returns None where the kernel does not apply (not CPU,
another dtype, odd sizes, autograd, kernels unavailable) and the caller keeps its PyTorch ops."""

from __future__ import annotations

import torch

from specserve.kernels.build import loaded

_DTYPES = (torch.float32, torch.bfloat16)


def _applies(*tensors: torch.Tensor) -> bool:
    first = tensors[0]
    return (first.device.type == "cpu" and first.dtype in _DTYPES
            and all(t.dtype == first.dtype and t.is_contiguous() for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def add_rms_norm(x: torch.Tensor, h: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x + h, RMSNorm(x + h) * weight), or (x, RMSNorm(x) * weight) when h is None. x [rows, dim]."""
    kernels = loaded()
    tensors = (x, weight) if h is None else (x, h, weight)
    if kernels is None or x.dim() != 2 or x.shape[1] % 16 or not _applies(*tensors):
        return None
    if h is not None and h.shape != x.shape:
        return None
    total = x if h is None else torch.empty_like(x)
    out = torch.empty_like(x)
    kernels.add_rms_norm(x.data_ptr(), None if h is None else h.data_ptr(), total.data_ptr(), out.data_ptr(),
                         weight.data_ptr(), x.shape[0], x.shape[1], eps, int(x.dtype == torch.bfloat16))
    return total, out


def rope_write_kv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                  v_cache: torch.Tensor, slot_mapping: torch.Tensor, num_heads: int, num_kv_heads: int,
                  head_dim: int) -> torch.Tensor | None:
    """Rotate q and k of the fused projection, write k and v at their slots; returns q [T, H, D]."""
    kernels = loaded()
    if (kernels is None or head_dim % 32 or qkv.dim() != 2
            or qkv.shape[1] != (num_heads + 2 * num_kv_heads) * head_dim
            or cos.shape[-1] != head_dim or k_cache.shape[-1] != head_dim or k_cache.shape[-2] != num_kv_heads
            or slot_mapping.dtype != torch.int64 or slot_mapping.device.type != "cpu"
            or not slot_mapping.is_contiguous() or not _applies(qkv, cos, sin, k_cache, v_cache)):
        return None
    tokens = qkv.shape[0]
    q = torch.empty(tokens, num_heads, head_dim, dtype=qkv.dtype)
    kernels.rope_write_kv(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(), k_cache.data_ptr(),
                          v_cache.data_ptr(), slot_mapping.data_ptr(), tokens, num_heads, num_kv_heads,
                          head_dim, int(qkv.dtype == torch.bfloat16))
    return q


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor | None:
    """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
    kernels = loaded()
    if kernels is None or gate_up.dim() != 2 or gate_up.shape[1] % 32 or not _applies(gate_up):
        return None
    tokens, inner = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty(tokens, inner, dtype=gate_up.dtype)
    kernels.silu_mul(gate_up.data_ptr(), out.data_ptr(), tokens, inner, int(gate_up.dtype == torch.bfloat16))
    return out
