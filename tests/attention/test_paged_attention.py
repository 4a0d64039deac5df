"""Paged attention against dense attention on the same keys and values (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specserve.attention.cpu_paged import CpuAttentionPlan, cpu_short_attention
from specserve.attention.metadata import AttentionMetadata
from specserve.attention.paged import paged_attention, reference_paged_attention, write_kv
from specserve.kernels.build import load_library
from specserve.worker.input_batch import tree_mask


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [Lq, H, D], k/v [Lk, Hkv, D], mask [Lq, Lk] -> [Lq, H, D], plain float64 maths."""
    rep = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(rep, dim=1)
    v = v.double().repeat_interleave(rep, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


request_shape = st.tuples(st.integers(0, 40), st.integers(1, 40), st.booleans())  # cached, new, tree


@settings(max_examples=40, deadline=None)
@given(requests=st.lists(request_shape, min_size=1, max_size=5), block_size=st.sampled_from([1, 4, 16]),
       heads=st.sampled_from([(4, 4), (4, 2), (6, 1)]), seed=st.integers(0, 2**16),
       head_dim=st.sampled_from([8, 16, 64]))  # 16 and 64 run the CPU kernel, 8 the PyTorch path
def test_paged_matches_dense(requests: list[tuple[int, int, bool]], block_size: int,
                             heads: tuple[int, int], seed: int, head_dim: int) -> None:
    md, query, k_cache, v_cache, expected = random_paged_batch(requests, block_size, heads, seed, head_dim)
    torch.testing.assert_close(reference_paged_attention(query, k_cache, v_cache, md), expected,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(paged_attention(query, k_cache, v_cache, md), expected, rtol=1e-4, atol=1e-5)


def random_paged_batch(requests: list[tuple[int, int, bool]], block_size: int, heads: tuple[int, int],
                       seed: int, head_dim: int, dtype: torch.dtype = torch.float32):
    """A batch of requests (cached, new, tree?) on shuffled blocks, with the dense float64 answer."""
    gen = torch.Generator().manual_seed(seed)
    num_heads, num_kv_heads = heads
    total_blocks = sum((c + n + block_size - 1) // block_size for c, n, _ in requests) + 3
    k_cache = torch.zeros(total_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)
    v_cache = torch.zeros_like(k_cache)
    # Hand out blocks in a shuffled order so block tables are not contiguous.
    free = torch.randperm(total_blocks, generator=gen).tolist()
    tables, seq_lens, qsl, masks, dense_inputs, slots = [], [], [0], [], [], []
    queries, new_k, new_v = [], [], []
    for cached, new, use_tree in requests:
        length = cached + new
        blocks = [free.pop() for _ in range((length + block_size - 1) // block_size)]
        k_all = torch.randn(length, num_kv_heads, head_dim, generator=gen).to(dtype)
        v_all = torch.randn(length, num_kv_heads, head_dim, generator=gen).to(dtype)
        all_slots = [blocks[p // block_size] * block_size + p % block_size for p in range(length)]
        # Cached tokens are already in the cache; the new ones are written by write_kv.
        write_kv(k_all[:cached], v_all[:cached], k_cache, v_cache, torch.tensor(all_slots[:cached], dtype=torch.long))
        slots.extend(all_slots[cached:])
        new_k.append(k_all[cached:])
        new_v.append(v_all[cached:])
        q = torch.randn(new, num_heads, head_dim, generator=gen).to(dtype)
        queries.append(q)
        custom = None
        if use_tree and new > 1:
            parents = [-1] + [int(torch.randint(-1, j, (1,), generator=gen)) for j in range(1, new - 1)]
            custom = tree_mask(1, parents)
        masks.append(custom)
        full = torch.ones(new, length, dtype=torch.bool)
        if custom is None:
            full[:, cached:] = torch.tril(torch.ones(new, new, dtype=torch.bool))
        else:
            full[:, cached:] = custom
        dense_inputs.append((q, k_all, v_all, full))
        tables.append(blocks)
        seq_lens.append(length)
        qsl.append(qsl[-1] + new)
    width = max(len(t) for t in tables)
    table_tensor = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    md = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long), query_start_loc=qsl,
                           seq_lens=seq_lens, block_tables=table_tensor, block_size=block_size,
                           custom_masks=masks if any(m is not None for m in masks) else [])
    write_kv(torch.cat(new_k), torch.cat(new_v), k_cache, v_cache, md.slot_mapping)
    query = torch.cat(queries)
    expected = torch.cat([dense_attention(*args) for args in dense_inputs]).float()
    return md, query, k_cache, v_cache, expected


@pytest.mark.skipif(load_library() is None, reason="no AVX-512 CPU or no gcc here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_kernel_runs_decode_and_tree_batches(dtype: torch.dtype, threads: int) -> None:
    """The kernel itself (not a fallback) on the default model's head shape: 9 heads over 3 KV heads."""
    if dtype == torch.bfloat16 and load_library().gemm_bf16 is None:
        pytest.skip("CPU lacks AVX512-BF16")
    requests = [(100, 1, False), (37, 1, False), (200, 6, True), (0, 5, False), (15, 32, True), (300, 9, True)]
    md, query, k_cache, v_cache, expected = random_paged_batch(requests, 16, (9, 3), 7, 64, dtype)
    out = torch.empty_like(query)
    plan = CpuAttentionPlan(md, list(range(len(requests))))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert cpu_short_attention(query, k_cache, v_cache, out, plan, 64 ** -0.5)
    finally:
        torch.set_num_threads(before)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), expected, **tol)
    torch.testing.assert_close(paged_attention(query, k_cache, v_cache, md).float(), expected, **tol)


def test_long_prefill_with_history_uses_causal_offset() -> None:
    """A prefill chunk longer than the batched limit, after cached tokens, still sees its history."""
    gen = torch.Generator().manual_seed(0)
    block_size, cached, new = 4, 10, 50
    k_cache = torch.randn(20, block_size, 2, 8, generator=gen)
    v_cache = torch.randn(20, block_size, 2, 8, generator=gen)
    blocks = list(range(19, 4, -1))
    md = AttentionMetadata(slot_mapping=torch.zeros(new, dtype=torch.long), query_start_loc=[0, new],
                           seq_lens=[cached + new], block_tables=torch.tensor([blocks]), block_size=block_size)
    q = torch.randn(new, 4, 8, generator=gen)
    torch.testing.assert_close(paged_attention(q, k_cache, v_cache, md),
                               reference_paged_attention(q, k_cache, v_cache, md), rtol=1e-4, atol=1e-5)


def _kernel_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, cached: int,
                      mask: torch.Tensor | None, block_size: int = 16) -> torch.Tensor:
    """One request through the CPU kernel: keys/values [length, Hkv, D] on shuffled blocks."""
    length = keys.shape[0]
    num_blocks = (length + block_size - 1) // block_size
    blocks = torch.randperm(num_blocks + 2, generator=torch.Generator().manual_seed(length))[:num_blocks].tolist()
    k_cache = torch.zeros(num_blocks + 2, block_size, *keys.shape[1:], dtype=keys.dtype)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([blocks[p // block_size] * block_size + p % block_size for p in range(length)])
    write_kv(keys, values, k_cache, v_cache, slots)
    md = AttentionMetadata(slot_mapping=slots[cached:], query_start_loc=[0, length - cached], seq_lens=[length],
                           block_tables=torch.tensor([blocks]), block_size=block_size,
                           custom_masks=[mask] if mask is not None else [])
    out = torch.empty_like(query)
    assert cpu_short_attention(query, k_cache, v_cache, out, CpuAttentionPlan(md, [0]), query.shape[-1] ** -0.5)
    return out


# (cached, parents): a tree whose nodes spill from a part-filled block into the next; a chain of 11 with
# two siblings (13 nodes: more tokens than one pass of the kernel takes) after a full block; a sibling
# beside a one-draft chain at the very start of a block.
TREES = [(109, [-1, 0, 0, 1, 2, 3, -1, 6, 4]),
         (112, [-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1, 0]),
         (95, [-1, -1])]


@pytest.mark.skipif(load_library() is None, reason="no AVX-512 CPU or no gcc here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cached,parents", TREES)
@pytest.mark.parametrize("threads", [1, 2])
def test_tree_token_attends_exactly_as_a_decode_step_of_its_path(dtype: torch.dtype, cached: int,
                                                                  parents: list[int], threads: int) -> None:
    # Greedy speculation must give the tokens of plain decoding, so a tree node's attention must equal,
    # to the bit, that of a decode step after its path was accepted (its keys right after the cache).
    # The kernel runs the blocks of cached keys for several tokens at once and the rest token by token.
    gen = torch.Generator().manual_seed(3)
    new = 1 + len(parents)
    keys = torch.randn(cached + new, 3, 64, generator=gen).to(dtype)
    values = torch.randn(cached + new, 3, 64, generator=gen).to(dtype)
    query = torch.randn(new, 9, 64, generator=gen).to(dtype)
    mask = tree_mask(1, parents)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tree_out = _kernel_attention(query, keys, values, cached, mask)
        for i in range(new):
            path = [cached + k for k in range(new) if mask[i, k]]  # the real token, ancestors, itself
            index = torch.tensor(list(range(cached)) + path)
            decode_out = _kernel_attention(query[i:i + 1], keys[index], values[index], cached + len(path) - 1, None)
            assert torch.equal(tree_out[i], decode_out[0]), f"tree token {i}"
    finally:
        torch.set_num_threads(before)
