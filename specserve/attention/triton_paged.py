"""Paged attention as one Triton kernel launch per layer (CUDA; Triton's interpreter also runs it on CPU).

Semantics are exactly `reference_paged_attention`'s: request i's new token j sees every cached token
and, among the new tokens, those allowed by the causal rule (k <= j) or by the request's custom mask
(tree-shaped speculative candidates). Decode, speculative verification and prefill chunks all go
through the same kernel, so one step is one launch per layer whatever its mix.

Work split: one program per (tile of query rows, KV head). A request's query rows are its new tokens
times the query heads sharing one KV head (row r = token r // group, head r % group), so a
multi-query model (48 heads over 1 KV head) reads each key once for all 48 heads. Each program walks
the request's context through its block table, BLOCK_N keys at a time, with an online softmax in
float32. Causal tiles stop at the last key their last token can see; custom-mask tiles read the
whole context (masks need not be triangular).

The per-step plan (tile list, per-request offsets, packed masks) is plain data built once per step
from the metadata and shared by all layers; CUDA graphs pass a plan whose tensors are static buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from specserve.attention.metadata import AttentionMetadata

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU builds: the module still imports; plans can still be built and checked
    triton = None
    tl = None
    HAS_TRITON = False

MIN_BLOCK_M = 16  # tl.dot needs every dimension >= 16
MAX_BLOCK_M = 64


@dataclass
class TritonPlan:
    """Everything the kernel reads about one step besides q/k/v; int32 unless noted."""

    work_req: torch.Tensor  # [num_work]: the request each program serves
    work_row0: torch.Tensor  # [num_work]: its first query row (token * group + head in group)
    q_start: torch.Tensor  # [num_reqs]: first row of the request in the flat batch
    q_len: torch.Tensor  # [num_reqs]: new tokens
    seq_len: torch.Tensor  # [num_reqs]: context length, new tokens included
    mask_offset: torch.Tensor  # [num_reqs]: start of its mask in `masks`, -1 = causal
    masks: torch.Tensor  # [total] int8: custom masks [q_len, q_len], row-major, concatenated
    block_tables: torch.Tensor  # [num_reqs, max_blocks] (int32 or int64)
    block_m: int
    num_queries_per_kv: int

    @property
    def num_work(self) -> int:
        return int(self.work_req.shape[0])


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tile_rows(query_lens: list[int], num_queries_per_kv: int) -> tuple[int, list[int], list[int]]:
    """(BLOCK_M, work_req, work_row0): tiles of at most BLOCK_M rows, never spanning two requests."""
    max_rows = max((q * num_queries_per_kv for q in query_lens), default=1)
    block_m = min(MAX_BLOCK_M, max(MIN_BLOCK_M, _next_pow2(max_rows)))
    work_req: list[int] = []
    work_row0: list[int] = []
    for i, q in enumerate(query_lens):
        for row0 in range(0, q * num_queries_per_kv, block_m):
            work_req.append(i)
            work_row0.append(row0)
    return block_m, work_req, work_row0


def warmup_query_lens(num_queries_per_kv: int) -> list[int]:
    """One request's query length for each tile height (BLOCK_M) the kernel is compiled for.

    Decode steps use the smallest tile, draft verification the middle ones, prefill chunks the
    largest. Running each once at start-up compiles them all, so that the first step that drafts
    does not stall the batch on a compile (about a second) in the middle of serving.
    """
    lens, heights = [], set()
    q = 1
    while MAX_BLOCK_M not in heights:
        height = tile_rows([q], num_queries_per_kv)[0]
        if height not in heights:
            heights.add(height)
            lens.append(q)
        q += 1
    return lens


def aligned_int32(arrays: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """Small int32 arrays in one host-to-device copy, each starting on a 16-byte boundary.

    Triton specialises a pointer argument on whether it is 16-byte aligned; views packed back to back
    would be aligned or not depending on the batch's request and tile counts, and every new pattern
    would compile the kernel again in the middle of serving.
    """
    padded = [a + [0] * (-len(a) % 4) for a in arrays]
    flat = torch.tensor([x for a in padded for x in a], dtype=torch.int32).to(device, non_blocking=True)
    return [part[:len(a)] for part, a in zip(flat.split([len(p) for p in padded]), arrays)]


def build_plan(md: AttentionMetadata, num_queries_per_kv: int, device: torch.device) -> TritonPlan:
    query_lens = [md.query_len(i) for i in range(md.num_reqs)]
    block_m, work_req, work_row0 = tile_rows(query_lens, num_queries_per_kv)
    offsets: list[int] = []
    packed: list[torch.Tensor] = []
    total = 0
    for i, q in enumerate(query_lens):
        custom = md.mask_for(i)
        if custom is None:
            offsets.append(-1)
            continue
        assert custom.shape == (q, q), "a custom mask covers exactly the request's new tokens"
        offsets.append(total)
        packed.append(custom.reshape(-1).to(torch.int8).cpu())
        total += q * q
    parts = aligned_int32([work_req, work_row0, md.query_start_loc[:-1], query_lens, list(md.seq_lens), offsets],
                          device)
    masks = torch.cat(packed).to(device) if packed else torch.zeros(1, dtype=torch.int8, device=device)
    return TritonPlan(work_req=parts[0], work_row0=parts[1], q_start=parts[2], q_len=parts[3],
                      seq_len=parts[4], mask_offset=parts[5], masks=masks,
                      block_tables=md.block_tables.to(device), block_m=block_m,
                      num_queries_per_kv=num_queries_per_kv)


def launch_config(head_dim: int) -> dict[str, int]:
    block_d = max(16, _next_pow2(head_dim))
    return {"BLOCK_D": block_d, "BLOCK_N": 64 if block_d <= 128 else 32,
            "num_warps": 4 if block_d <= 128 else 8}


def triton_paged_attention(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    v_cache: torch.Tensor,
    md: AttentionMetadata,
    scale: float | None = None,
) -> torch.Tensor:
    """Same contract as `paged.paged_attention`; the plan is cached in ``md.cache["triton_plan"]``."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not installed")
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    plan = md.cache.get("triton_plan")
    if not isinstance(plan, TritonPlan) or plan.num_queries_per_kv != group:
        plan = build_plan(md, group, query.device)
        md.cache["triton_plan"] = plan
    if query.stride(2) != 1:
        query = query.contiguous()
    assert k_cache.is_contiguous() and v_cache.is_contiguous(), "the KV cache is one dense tensor per layer"
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)  # [num_slots, num_kv_heads, head_dim]
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    out = torch.empty_like(query)
    if num_tokens == 0:
        return out
    scale = scale if scale is not None else head_dim ** -0.5
    config = launch_config(head_dim)
    _paged_attention_kernel[(plan.num_work, num_kv_heads)](
        query, flat_k, flat_v, out, plan.block_tables, plan.work_req, plan.work_row0, plan.q_start,
        plan.q_len, plan.seq_len, plan.mask_offset, plan.masks, float(scale),
        query.stride(0), query.stride(1), flat_k.stride(0), flat_k.stride(1), flat_v.stride(0),
        flat_v.stride(1), out.stride(0), out.stride(1), plan.block_tables.stride(0),
        GROUP=group, BLOCK_SIZE=md.block_size, HEAD_DIM=head_dim, BLOCK_D=config["BLOCK_D"],
        BLOCK_M=plan.block_m, BLOCK_N=config["BLOCK_N"], IEEE=query.dtype == torch.float32,
        num_warps=config["num_warps"])
    return out


_paged_attention_kernel: Any = None

if HAS_TRITON:

    # The block-table stride is the widest table of the step, which moves as contexts grow: specialised
    # (Triton does so for ints divisible by 16 or equal to 1), each new class would compile mid-serve.
    @triton.jit(do_not_specialize=["stride_bt"])
    def _paged_attention_kernel(  # type: ignore[no-redef]
        Q, K, V, O, BlockTables, WorkReq, WorkRow0, QStart, QLen, SeqLen, MaskOffset, Masks, scale,
        stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_bt,
        GROUP: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ):
        work = tl.program_id(0)
        kv_head = tl.program_id(1)
        req = tl.load(WorkReq + work)
        row0 = tl.load(WorkRow0 + work)
        q_start = tl.load(QStart + req)
        q_len = tl.load(QLen + req)
        seq_len = tl.load(SeqLen + req)
        mask_offset = tl.load(MaskOffset + req)
        has_mask = mask_offset >= 0
        num_cached = seq_len - q_len

        rows = row0 + tl.arange(0, BLOCK_M)
        tok = rows // GROUP  # [BLOCK_M] new-token index within the request
        head = kv_head * GROUP + rows % GROUP
        row_ok = tok < q_len
        row_has_mask = (mask_offset + 0 * rows) >= 0  # has_mask as a [BLOCK_M] block
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        q_rows = (q_start + tok).to(tl.int64)
        q = tl.load(Q + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]

        last_tok = (tl.minimum(row0 + BLOCK_M, q_len * GROUP) - 1) // GROUP  # the tile's last token
        kv_end = tl.where(has_mask, seq_len, num_cached + last_tok + 1)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start in range(0, kv_end, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] context index
            n_ok = n < kv_end
            block = tl.load(BlockTables + req * stride_bt + n // BLOCK_SIZE, mask=n_ok, other=0)
            slot = block.to(tl.int64) * BLOCK_SIZE + n % BLOCK_SIZE
            kv_ok = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + slot[:, None] * stride_kt + kv_head * stride_kh + d[None, :], mask=kv_ok,
                        other=0.0)  # [BLOCK_N, BLOCK_D]
            v = tl.load(V + slot[:, None] * stride_vt + kv_head * stride_vh + d[None, :], mask=kv_ok,
                        other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale  # [BLOCK_M, BLOCK_N] float32
            new_idx = n - num_cached  # >= 0: one of the request's new tokens
            causal = new_idx[None, :] <= tok[:, None]
            mask_ok = (row_has_mask & row_ok)[:, None] & ((new_idx >= 0) & n_ok)[None, :]
            mask_ptrs = Masks + mask_offset + tok[:, None] * q_len + new_idx[None, :]
            custom = tl.load(mask_ptrs, mask=mask_ok, other=0)
            from_mask = (new_idx < 0)[None, :] | (custom != 0)
            seen = tl.where(row_has_mask[:, None], from_mask, causal) & n_ok[None, :] & row_ok[:, None]
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows stay at zero
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
