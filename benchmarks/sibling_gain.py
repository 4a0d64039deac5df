"""What siblings could add to a speculator's chain, teacher-forced on a training run's held-out shards.

For every position of the held-out phase-2 shards (every tenth shard, as training holds out), runs the
speculator's stages along the base model's own continuation and records, per chain position k, whether
the chain's token (each stage's best) is right with every earlier one right, and whether the stage's
second-best token is right there instead (a sibling would rescue the step). Then walks each sequence
step by step, as decoding does (a step at t emits its accepted drafts plus one token and the next step
starts after them), because steps land on hard positions more often than the average over positions.

    python benchmarks/sibling_gain.py runs/mlp-full [--depth 5]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from specserve.spec.checkpoint import load_mlp_speculator
from specserve.train.losses import head_index
from specserve.train.trainer import split_phase2


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a train-speculator output folder (ibm/ and cache/phase2/)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_mlp_speculator(args.run / "ibm").eval()
    model.config = dataclasses.replace(model.config, num_lookahead_tokens=args.depth)
    to_head = head_index(model.vocab_map, model.config.vocab_size)
    held_out, _ = split_phase2(sorted((args.run / "cache" / "phase2").glob("shard_*.pt")))
    depth = args.depth
    positions = 0
    chain_total = 0.0
    rescue_total = [0.0] * (depth + 1)  # siblings at positions 1..k
    walked = {"chain": [0, 0], "chain + 1 sibling": [0, 0], "chain + 2 siblings": [0, 0]}  # [steps, tokens]
    for path in held_out:
        shard = torch.load(path)
        ids, greedy, mask = shard["input_ids"].long(), shard["greedy_ids"].long(), shard["loss_mask"]
        n = ids.shape[1] - depth - 1
        valid = torch.arange(ids.shape[1]) < shard["lengths"].view(-1, 1)
        counted = mask[:, :n] & valid[:, depth + 1:depth + 1 + n]
        state = model.input_state(shard["hidden"][:, :n].float())
        prefix_right = torch.ones_like(counted)
        chain = torch.zeros(counted.shape)
        rescue = [torch.zeros(counted.shape) for _ in range(depth)]  # rescue[k]: a sibling at position k+1
        for i in range(depth):
            state, logits = model.step(i, state, ids[:, 1 + i:1 + i + n])
            top = logits.topk(2, dim=-1).indices
            label = to_head[greedy[:, 1 + i:1 + i + n]]
            first, second = top[..., 0] == label, top[..., 1] == label
            rescue[i] = (prefix_right & ~first & second).float()
            prefix_right &= first
            chain += prefix_right.float()
        positions += int(counted.sum())
        chain_total += float(chain[counted].sum())
        for k in range(1, depth + 1):
            rescue_total[k] += float(sum(rescue[:k])[counted].sum())
        for b in range(counted.shape[0]):
            where = counted[b].nonzero().flatten().tolist()
            if not where:
                continue
            for name, num_siblings in (("chain", 0), ("chain + 1 sibling", 1), ("chain + 2 siblings", 2)):
                t = where[0]
                while t <= where[-1]:
                    accepted = int(chain[b, t])
                    # the sibling at the failed position, when it is one of the first num_siblings positions
                    if accepted < min(num_siblings, depth) and rescue[accepted][b, t]:
                        accepted += 1
                    walked[name][0] += 1
                    walked[name][1] += accepted + 1
                    t += accepted + 1
    print(f"{positions} held-out positions, depth {depth}")
    print(f"chain: {chain_total / positions:.3f} accepted drafts per position")
    for k in range(1, depth + 1):
        print(f"  + siblings at positions 1..{k}: +{rescue_total[k] / positions:.3f}")
    for name, (steps, tokens) in walked.items():
        print(f"walked step by step, {name}: {tokens / steps:.3f} tokens per step")


if __name__ == "__main__":
    main()
