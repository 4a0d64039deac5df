"""The CPU paged-attention kernel alone: 30 layers' calls for one request, by context length, query rows
and chain against tree (the default model's head shape: 9 heads over 3 KV heads, 64 dims, blocks of 16).

Each layer has its own K/V cache on shuffled blocks; a 256 MB buffer is rewritten between rounds so
the caches are not all in the CPU's caches, as in a real step where the weights stream through.
The tree is a chain with its last token made a sibling of the one before it (a chain with a sibling).

    python benchmarks/attention_rows_cost.py [--threads 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time
import types

import torch

from specserve.attention.cpu_paged import cpu_short_attention
from specserve.kernels.build import loaded

HEADS, KV_HEADS, DIM, BLOCK, LAYERS, BLOCKS = 9, 3, 64, 16, 30, 1024


def plan_for(seq_len: int, rows: int, tree: bool) -> types.SimpleNamespace:
    """The kernel plan (as attention/cpu_paged.CpuAttentionPlan) of one request with ``rows`` new tokens."""
    plan = types.SimpleNamespace(num=1)
    plan.q_start = torch.tensor([0], dtype=torch.int32)
    plan.q_len = torch.tensor([rows], dtype=torch.int32)
    plan.seq_len = torch.tensor([seq_len], dtype=torch.int32)
    blocks = torch.randperm(BLOCKS)[:(seq_len + BLOCK - 1) // BLOCK]
    plan.block_tables = blocks.to(torch.int32).view(1, -1).contiguous()
    if tree:
        mask = torch.tril(torch.ones(rows, rows, dtype=torch.uint8))
        if rows > 2:
            mask[-1, -2] = 0  # the last token is the sibling of the one before it
        plan.mask_off = torch.tensor([0], dtype=torch.int64)
        plan.masks = mask.contiguous().view(-1)
    else:
        plan.mask_off = torch.tensor([-1], dtype=torch.int64)
        plan.masks = torch.zeros(1, dtype=torch.uint8)
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if loaded() is None:
        raise SystemExit("the CPU kernels are unavailable here (no AVX-512 or no gcc)")
    caches = [(torch.randn(BLOCKS, BLOCK, KV_HEADS, DIM), torch.randn(BLOCKS, BLOCK, KV_HEADS, DIM))
              for _ in range(LAYERS)]
    flush = torch.randn(64 << 20)
    print(f"float32, {args.threads} threads: ms per step (30 layers), median and least of {args.rounds} rounds")
    for seq_len in (64, 200, 400):
        for rows, tree in ((1, False), (8, False), (8, True), (12, True)):
            plan = plan_for(seq_len, rows, tree)
            query, out = torch.randn(rows, HEADS, DIM), torch.empty(rows, HEADS, DIM)
            times = []
            for _ in range(args.rounds):
                flush.add_(1.0)
                started = time.perf_counter()
                for k_cache, v_cache in caches:
                    assert cpu_short_attention(query, k_cache, v_cache, out, plan, DIM ** -0.5)
                times.append(1e3 * (time.perf_counter() - started))
            times.sort()
            kind = "tree " if tree else "chain"
            print(f"context {seq_len:4d}, {rows:2d} rows, {kind}: {times[len(times) // 2]:6.3f}  (least {times[0]:.3f})")


if __name__ == "__main__":
    main()
