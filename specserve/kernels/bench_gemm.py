"""F.linear against the few-row kernel over a whole model's weights (the default model's shapes).

    python -m specserve.kernels.bench_gemm [--threads 2] [--rows 1,2,4,8,16,24,32,48,64]

Prints, per dtype and row count, the time of one pass over every weight matrix with F.linear, the
row kernel (cpu_gemm.c, nn.Linear's layout) and the panel kernel (cpu_gemm_packed.c, packed copy). Used
to pick cpu_gemm's MAX_ROWS / PACKED_MIN_ROWS / PACKED_MAX_ROWS; run it with nothing else running.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from specserve.kernels.build import load_library
from specserve.kernels.cpu_gemm import pack_weight, run_gemm

# SmolLM2-135M: 30 x (fused qkv, o, fused gate/up, down) and the 49k-row tied head
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)] * 30 + [(49152, 576)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="1,2,4,8,16,24,32,48,64,128,256")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = load_library()
    if kernels is None:
        raise SystemExit("the CPU kernels are unavailable here (no AVX-512 or no gcc)")
    for dtype, fn, packed_fn in ((torch.float32, kernels.gemm_f32, kernels.gemm_packed_f32),
                                 (torch.bfloat16, kernels.gemm_bf16, kernels.gemm_packed_bf16)):
        if fn is None or packed_fn is None:
            continue
        weights = [torch.randn(n, k).to(dtype) for n, k in SHAPES]
        packs = {id(w): pack_weight(w) for w in weights}

        def kernel(x: torch.Tensor, w: torch.Tensor) -> None:
            run_gemm(fn, x, w, w.shape[0], args.threads)

        def panels(x: torch.Tensor, w: torch.Tensor) -> None:
            run_gemm(packed_fn, x, packs[id(w)], w.shape[0], args.threads)

        print(f"{dtype}, {args.threads} threads: ms per pass over all weights (best of 3)")
        print(f"{'rows':>5} {'F.linear':>9} {'row':>9} {'packed':>9} {'row_x':>7} {'packed_x':>8}")
        for rows in map(int, args.rows.split(",")):
            xs = {k: torch.randn(rows, k).to(dtype) for k in {k for _, k in SHAPES}}
            best = {"linear": float("inf"), "kernel": float("inf"), "panels": float("inf")}
            for _ in range(3):
                for name, op in (("linear", F.linear), ("kernel", kernel), ("panels", panels)):
                    start = time.perf_counter()
                    for w in weights:
                        op(xs[w.shape[1]], w)
                    best[name] = min(best[name], time.perf_counter() - start)
            print(f"{rows:>5} {best['linear'] * 1e3:>9.1f} {best['kernel'] * 1e3:>9.1f} {best['panels'] * 1e3:>9.1f} "
                  f"{best['linear'] / best['kernel']:>6.2f}x {best['linear'] / best['panels']:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
