"""CPU paged attention for short queries through the hand-written kernel (kernels/cpu_attention.c).

Decode tokens and speculative candidates (requests with at most MAX_BATCHED_QUERY_LEN new tokens)
attend to their blocks in place, one kernel call per layer for all of them; no K/V gather is
materialised. ``paged.paged_attention`` calls this first on CPU and keeps its PyTorch path for the
rest (long prefill chunks) and wherever the kernels are unavailable.
"""

from __future__ import annotations

import torch

from specserve.attention.metadata import AttentionMetadata
from specserve.kernels.build import loaded


class CpuAttentionPlan:
    """Per-step int32 views of the metadata for the kernel (built once, shared by every layer)."""

    def __init__(self, md: AttentionMetadata, reqs: list[int]) -> None:
        self.num = len(reqs)
        self.q_start = torch.tensor([md.query_start_loc[i] for i in reqs], dtype=torch.int32)
        self.q_len = torch.tensor([md.query_len(i) for i in reqs], dtype=torch.int32)
        self.seq_len = torch.tensor([md.seq_lens[i] for i in reqs], dtype=torch.int32)
        tables = md.block_tables.index_select(0, torch.tensor(reqs, dtype=torch.long, device=md.block_tables.device))
        self.block_tables = tables.to(device="cpu", dtype=torch.int32).contiguous()
        offsets, chunks, total = [], [], 0
        for i in reqs:
            mask = md.mask_for(i)
            if mask is None:
                offsets.append(-1)
                continue
            flat = mask.to(device="cpu", dtype=torch.uint8).contiguous().view(-1)
            offsets.append(total)
            chunks.append(flat)
            total += flat.numel()
        self.mask_off = torch.tensor(offsets, dtype=torch.int64)
        self.masks = torch.cat(chunks) if chunks else torch.zeros(1, dtype=torch.uint8)


def cpu_short_attention(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
                        plan: CpuAttentionPlan, scale: float) -> bool:
    """Write the attention of the plan's requests into their rows of ``out``; False = not handled."""
    kernels = loaded()
    if kernels is None or query.dtype not in (torch.float32, torch.bfloat16) or k_cache.dtype != query.dtype:
        return False
    if not (out.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()):
        return False
    query = query.contiguous()
    num_heads, head_dim = query.shape[1], query.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    status = kernels.paged_attention(
        query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), out.data_ptr(),
        int(query.dtype == torch.bfloat16), plan.q_start.data_ptr(), plan.q_len.data_ptr(),
        plan.seq_len.data_ptr(), plan.block_tables.data_ptr(), plan.block_tables.shape[1],
        plan.mask_off.data_ptr(), plan.masks.data_ptr(), plan.num, num_heads, num_kv_heads, head_dim,
        block_size, scale, torch.get_num_threads())
    return status == 0
