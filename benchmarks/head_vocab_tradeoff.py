"""The head-vocabulary trade-off of the MLP speculator: coverage of the model's output against cost.

    python benchmarks/head_vocab_tradeoff.py runs/mlp-full [--threads 2]

For head sizes N, reports (1) the share of the base model's greedy tokens, on the held-out phase-2
shards (every tenth shard, which training never sees), that lie in the N most frequent tokens counted
on the training shards (the same count as the trainer's vocab map), an upper bound on every stage's
acceptance; (2) the time of one chain proposal (3 stages, batch 1) of a tied MLP speculator with that
head, through the same CPU kernels as in the engine (packed GEMMs, the one-call chain), in float32 and
bfloat16.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from specserve.model.fast_linear import enable_fast_linear
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.train.trainer import greedy_token_counts, split_phase2

SIZES = (1024, 2048, 4096, 8192, 16384, 49152)


def chain_ms(head_vocab: int, dtype: torch.dtype, iters: int = 200) -> float:
    model = MLPSpeculator(MLPSpeculatorConfig(576, 49152, 3, tie_weights=True, scale_input=True,
                                              head_vocab_size=head_vocab if head_vocab < 49152 else 0))
    model.reset_parameters(torch.Generator().manual_seed(0))
    model = model.to(dtype).eval()
    enable_fast_linear(model)
    model.attach_cpu_chain()  # the engine's chain path: packed GEMMs in one C call
    hidden, last = torch.randn(1, 576, dtype=dtype), torch.tensor([42])
    for _ in range(10):
        model.propose_paths(hidden, last, [1, 1, 1], 1)
    start = time.perf_counter()
    for _ in range(iters):
        model.propose_paths(hidden, last, [1, 1, 1], 1)
    return (time.perf_counter() - start) / iters * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a train-speculator output folder (its cache/phase1 and cache/phase2)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.run) / "cache"
    val, train2 = split_phase2(sorted((cache / "phase2").glob("shard_*.pt")))
    ranked = greedy_token_counts(sorted((cache / "phase1").glob("shard_*.pt")), train2)  # the vocab map's ranking
    order = [tok for tok, _ in ranked.most_common()]
    held = greedy_token_counts(val, [])
    total = sum(held.values())
    print(f"held-out greedy tokens: {total} (from {len(val)} shards), threads {args.threads}")
    print(f"{'head tokens':>11}  {'coverage':>8}  {'chain ms fp32':>13}  {'chain ms bf16':>13}")
    for size in SIZES:
        top = set(order[:size])
        coverage = sum(n for tok, n in held.items() if tok in top) / total
        print(f"{size:>11}  {coverage:>8.3f}  {chain_ms(size, torch.float32):>13.2f}  {chain_ms(size, torch.bfloat16):>13.2f}")


if __name__ == "__main__":
    main()
