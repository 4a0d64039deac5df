"""Paged attention: a plain reference op (for tests) and a batched op (the one the model uses).

On CUDA with Triton installed, `paged_attention` runs the Triton kernel of triton_paged.py instead
(same semantics, one launch per layer, CUDA-graph friendly); everywhere else the SDPA path below.

KV cache layout per layer: k_cache, v_cache of shape [num_blocks, block_size, num_kv_heads, head_dim].
A slot is one token position: slot = block_id * block_size + offset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from specserve.attention import triton_paged
from specserve.attention.cpu_paged import CpuAttentionPlan, cpu_short_attention
from specserve.attention.metadata import AttentionMetadata

# Requests with at most this many new tokens (decode steps, speculative candidates) are padded
# into one batched attention call; longer prefill chunks get a call of their own.
MAX_BATCHED_QUERY_LEN = 32


def write_kv(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens]
) -> None:
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def context_mask(query_len: int, seq_len: int, custom: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Bool mask [query_len, seq_len]: True where a new token may attend to a context token."""
    num_cached = seq_len - query_len
    if custom is None:
        q_pos = torch.arange(query_len, device=device).unsqueeze(1) + num_cached
        k_pos = torch.arange(seq_len, device=device).unsqueeze(0)
        return k_pos <= q_pos
    mask = torch.ones(query_len, seq_len, dtype=torch.bool, device=device)
    mask[:, num_cached:] = custom.to(device=device, dtype=torch.bool)
    return mask


def _gather_slots(block_table: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    num_blocks = (seq_len + block_size - 1) // block_size
    offsets = torch.arange(block_size, device=block_table.device)
    slots = (block_table[:num_blocks].unsqueeze(1) * block_size + offsets).reshape(-1)
    return slots[:seq_len]


def reference_paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    md: AttentionMetadata,
    scale: float | None = None,
) -> torch.Tensor:
    """Straightforward per-request attention in float32; the ground truth for tests."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(head_dim)
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    out = torch.empty_like(query)
    for i in range(md.num_reqs):
        start, end = md.query_start_loc[i], md.query_start_loc[i + 1]
        seq_len = md.seq_lens[i]
        slots = _gather_slots(md.block_tables[i], seq_len, md.block_size)
        k = flat_k[slots].float().repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = flat_v[slots].float().repeat_interleave(num_heads // num_kv_heads, dim=1)
        q = query[start:end].float()
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        mask = context_mask(end - start, seq_len, md.mask_for(i), query.device)
        scores = scores.masked_fill(~mask.unsqueeze(0), float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v).to(query.dtype)
    return out


class _BatchedPlan:
    """Per-step index tensors shared by every layer (built once from the metadata).

    The padded tensors for the PyTorch short-query path and the CPU kernel's int32 views are each
    built on first use: a step served by the CPU kernel never builds the padded ones."""

    def __init__(self, md: AttentionMetadata, device: torch.device) -> None:
        short = [i for i in range(md.num_reqs) if md.query_len(i) <= MAX_BATCHED_QUERY_LEN]
        self.long_reqs = [i for i in range(md.num_reqs) if md.query_len(i) > MAX_BATCHED_QUERY_LEN]
        self.short_reqs = short
        self.long_masks: dict[int, torch.Tensor | None] = {}
        self.long_slots: dict[int, torch.Tensor] = {}
        for i in self.long_reqs:
            custom = md.mask_for(i)
            self.long_masks[i] = None if custom is None else context_mask(
                md.query_len(i), md.seq_lens[i], custom, device)
            self.long_slots[i] = _gather_slots(md.block_tables[i], md.seq_lens[i], md.block_size)
        self.cpu_plan: CpuAttentionPlan | None = None
        self.padded = False

    def build_cpu_plan(self, md: AttentionMetadata) -> CpuAttentionPlan:
        if self.cpu_plan is None:
            self.cpu_plan = CpuAttentionPlan(md, self.short_reqs)
        return self.cpu_plan

    def build_padded(self, md: AttentionMetadata, device: torch.device) -> None:
        """The short requests padded to one batch: slots, mask and row maps for _short_query_attention."""
        if self.padded:
            return
        self.padded = True
        short = self.short_reqs
        max_q = max(md.query_len(i) for i in short)
        max_len = max(md.seq_lens[i] for i in short)
        num = len(short)
        slots = torch.zeros(num, max_len, dtype=torch.long, device=device)
        mask = torch.zeros(num, max_q, max_len, dtype=torch.bool, device=device)
        q_rows = torch.zeros(num, max_q, dtype=torch.long, device=device)
        q_valid = torch.zeros(num, max_q, dtype=torch.bool, device=device)
        for row, i in enumerate(short):
            qlen, seq_len = md.query_len(i), md.seq_lens[i]
            slots[row, :seq_len] = _gather_slots(md.block_tables[i], seq_len, md.block_size)
            mask[row, :qlen, :seq_len] = context_mask(qlen, seq_len, md.mask_for(i), device)
            mask[row, qlen:, 0] = True  # padded query rows attend to one key so softmax stays finite
            q_rows[row, :qlen] = torch.arange(md.query_start_loc[i], md.query_start_loc[i] + qlen)
            q_valid[row, :qlen] = True
        self.slots = slots.view(-1)  # [num_short * max_len]
        self.num_short, self.max_q, self.max_len = num, max_q, max_len
        # No mask at all when every key is visible (single decode tokens of equal length): faster SDPA.
        self.mask = None if bool(mask[:, :, :].all()) else mask.unsqueeze(1)  # [num_short, 1, max_q, max_len]
        flat_rows = q_rows[q_valid]
        # When the short requests' rows are exactly 0..n-1 without padding, no gather/scatter is needed.
        self.identity = (len(self.long_reqs) == 0 and bool(q_valid.all())
                         and bool((flat_rows == torch.arange(flat_rows.numel(), device=device)).all()))
        self.q_rows = q_rows.view(-1)  # [num_short * max_q]
        self.valid_index = torch.nonzero(q_valid.view(-1)).view(-1)  # padded position -> kept
        self.out_rows = flat_rows


def _short_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           scale: float) -> torch.Tensor:
    """Attention for a few queries per request, as two batched matmuls.

    q [B, Q, H, D], k/v [B, Hkv, L, D], mask [B, 1, Q, L] or None -> [B, Q, H, D]. The query heads that
    share a KV head are stacked as extra query rows, so K and V are read once per KV head. (CPU
    SDPA's flash kernel spent over half of a 32-request bfloat16 decode step here; this is far faster.)
    """
    b, nq, h, d = q.shape
    hkv = k.shape[1]
    group = h // hkv
    if nq == 1:  # plain decode: [B, 1, H, D] is already [B, Hkv, G, D] (head h = kv * group + g)
        qg = q.view(b, hkv, group, d)
    else:
        qg = q.permute(0, 2, 1, 3).reshape(b, hkv, group * nq, d)
    if mask is not None and nq > 1:
        mask = mask.expand(b, group, nq, mask.shape[-1]).reshape(b, 1, group * nq, mask.shape[-1])
    if b > 1 and hkv > 1:
        # Per KV head, k[:, kv] is [B, L, D] with a row stride of Hkv*D: bmm reads it in place, where
        # one 4-D matmul first copies all of K and V into [B*Hkv, L, D] (measured at 32 requests,
        # float32, one thread: about 5% faster per step; no clear difference in bfloat16).
        k3, v3 = k.transpose(1, 2), v.transpose(1, 2)  # [B, L, Hkv, D] views of the gathered slots
        outs = []
        for kv in range(hkv):
            scores = torch.bmm(qg[:, kv], k3[:, :, kv].transpose(1, 2)).float() * scale  # [B, G*Q, L]
            if mask is not None:
                scores = scores.masked_fill(~mask[:, 0], float("-inf"))
            outs.append(torch.bmm(torch.softmax(scores, dim=-1).to(v.dtype), v3[:, :, kv]))
        out = torch.stack(outs, dim=1)  # [B, Hkv, G*Q, D]
    else:
        scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale  # [B, Hkv, G*Q, L]
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)  # [B, Hkv, G*Q, D]
    if nq == 1:
        return out.view(b, 1, h, d)
    return out.view(b, h, nq, d).transpose(1, 2)


def _batched_plan(md: AttentionMetadata, device: torch.device) -> _BatchedPlan:
    """The step's plan, built by the first layer that asks and shared by the rest."""
    plan = md.cache.get("batched_plan")
    if plan is None:
        plan = _BatchedPlan(md, device)
        md.cache["batched_plan"] = plan
    assert isinstance(plan, _BatchedPlan)
    return plan


def cpu_kernel_plan(md: AttentionMetadata) -> CpuAttentionPlan | None:
    """The CPU kernel's plan for this step when every request has a short query, else None."""
    plan = _batched_plan(md, md.block_tables.device)
    if plan.long_reqs or not plan.short_reqs:
        return None
    return plan.build_cpu_plan(md)


def paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    md: AttentionMetadata,
    scale: float | None = None,
) -> torch.Tensor:
    """Batched paged attention via SDPA: one padded call for short queries, one per long prefill."""
    if query.is_cuda and triton_paged.HAS_TRITON:
        return triton_paged.triton_paged_attention(query, k_cache, v_cache, md, scale)
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    plan = _batched_plan(md, query.device)
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    gqa = num_heads != num_kv_heads
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)  # contiguous even if query is a view
    scale = scale if scale is not None else head_dim ** -0.5
    short_done = False
    if plan.short_reqs and query.device.type == "cpu":
        short_done = cpu_short_attention(query, k_cache, v_cache, out, plan.build_cpu_plan(md), scale)
    if plan.short_reqs and not short_done:
        plan.build_padded(md, query.device)
        b, max_q, max_len = plan.num_short, plan.max_q, plan.max_len
        if plan.identity:
            q = query.view(b, max_q, num_heads, head_dim)
        else:
            q = query.index_select(0, plan.q_rows).view(b, max_q, num_heads, head_dim)
        k = flat_k.index_select(0, plan.slots).view(b, max_len, num_kv_heads, head_dim).transpose(1, 2)
        v = flat_v.index_select(0, plan.slots).view(b, max_len, num_kv_heads, head_dim).transpose(1, 2)
        o = _short_query_attention(q, k, v, plan.mask, scale)
        o = o.reshape(b * max_q, num_heads, head_dim)
        if plan.identity:
            if not plan.long_reqs:
                return o
            out[:b * max_q] = o
        else:
            out.index_copy_(0, plan.out_rows, o.index_select(0, plan.valid_index))
    for i in plan.long_reqs:
        start, end = md.query_start_loc[i], md.query_start_loc[i + 1]
        slots = plan.long_slots[i]
        q = query[start:end].transpose(0, 1).unsqueeze(0)  # [1, H, q, D]
        k = flat_k[slots].transpose(0, 1).unsqueeze(0)
        v = flat_v[slots].transpose(0, 1).unsqueeze(0)
        mask = plan.long_masks[i]
        if mask is None and end - start == md.seq_lens[i]:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            if mask is None:
                mask = context_mask(end - start, md.seq_lens[i], None, query.device)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        out[start:end] = o.squeeze(0).transpose(0, 1)
    return out
