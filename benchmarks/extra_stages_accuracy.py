"""How well a tied MLP speculator guesses when it runs past the stages it was trained with.

Teacher-forced, on the held-out phase-2 shards of a training run (every tenth shard): the speculator
is rebuilt with ``num_lookahead_tokens`` = N, so steps past n_predict repeat its last (tied) stage
with the state weight of training, and each step's argmax is compared with the base model's greedy
token. Prints per-step accuracy, the chain accuracy (every step so far right) and the expected tokens
per verification step of a single chain (bonus included) at each depth.

    python benchmarks/extra_stages_accuracy.py runs/mlp-full [--depth 6]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from specserve.spec.checkpoint import load_mlp_speculator
from specserve.spec.mlp_speculator import MLPSpeculator
from specserve.train.losses import head_index, speculator_loss, stage_batch
from specserve.train.trainer import split_phase2, stage_means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training run folder (holds ibm/ and cache/phase2/)")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trained = load_mlp_speculator(args.run / "ibm").eval()
    model = MLPSpeculator(dataclasses.replace(trained.config, n_predict=args.depth, num_lookahead_tokens=0))
    model.load_state_dict(trained.state_dict(), strict=False)  # stages past n_predict come from the tie
    model.tie()
    model.vocab_map = trained.vocab_map
    model.state_weight, model.emb_scale = trained.state_weight, trained.emb_scale  # those of training
    model.eval()
    held_out, _ = split_phase2(sorted((args.run / "cache" / "phase2").glob("shard_*.pt")))
    to_head = head_index(model.vocab_map, trained.config.vocab_size)
    results = []
    with torch.no_grad():
        for path in held_out:
            batch = stage_batch(torch.load(path), args.depth, to_head)
            results.append(speculator_loss(model(batch.hidden, batch.token_ids), batch.labels, [1.0] * args.depth))
    total = sum(r.num_labels for r in results)
    mean = {key: stage_means(results, key) for key in ("stage_acc", "chain_acc")}
    print(f"{trained.config.n_predict} trained stages, {args.depth} run, {total} held-out positions")
    print("step accuracy:", " / ".join(f"{a:.3f}" for a in mean["stage_acc"]))
    print("chain accuracy:", " / ".join(f"{a:.3f}" for a in mean["chain_acc"]))
    print("expected tokens/step by depth:",
          " / ".join(f"{1 + sum(mean['chain_acc'][:d]):.3f}" for d in range(1, args.depth + 1)))


if __name__ == "__main__":
    main()
