"""Time of one speculator proposal (batch 1, chain and tree), float32 and bfloat16.

    python benchmarks/speculator_cost.py [SPECULATOR_DIR] [--threads N]

"pytorch" is the plain module; "engine" is what the engine runs: packed few-row GEMMs
(enable_fast_linear) and, for the chain, the one-call C kernel (spec/cpu_chain.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from specserve.engine.model_setup import load_bundle
from specserve.model.fast_linear import enable_fast_linear
from specserve.spec.checkpoint import load_mlp_speculator
from specserve.spec.factory import SHIPPED_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("speculator", nargs="?", default=str(SHIPPED_DIR / "smollm2-135m-instruct-mlp"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, "float32")
    emb = bundle.model.get_input_embeddings().weight.detach().float()
    print(f"speculator {args.speculator}, threads {args.threads}, batch 1, {args.iters} calls after 5 warm-up")
    for dtype in (torch.float32, torch.bfloat16):
        for path in ("pytorch", "engine"):
            model = load_mlp_speculator(args.speculator, base_embedding=emb).to(dtype).eval()
            if path == "engine":
                enable_fast_linear(model)
                model.attach_cpu_chain()
            hidden, last = torch.randn(1, emb.shape[1], dtype=dtype), torch.tensor([42])
            for name, top_k, paths in (("chain", [1, 1, 1], 1), ("tree", [4, 3, 2], 5)):
                for _ in range(5):
                    model.propose_paths(hidden, last, top_k, paths)
                start = time.perf_counter()
                for _ in range(args.iters):
                    model.propose_paths(hidden, last, top_k, paths)
                ms = (time.perf_counter() - start) / args.iters * 1e3
                print(f"{str(dtype).removeprefix('torch.'):>9} {path:>7} {name:>5}: {ms:.2f} ms")


if __name__ == "__main__":
    main()
