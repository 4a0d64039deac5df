"""The roofline of single-request decode: every step reads all the weights once, so

    max decode tokens/s (no speculation) = memory read bandwidth / weight bytes read per step.

The bandwidth is measured in the same run (a large torch sum, and a large copy), because the machine
the benchmark runs on, and how busy it is, decide it. Only speculation, which verifies several tokens
per read of the weights, can pass this line.

``specserve bench roofline`` prints the line next to one plain single-request decode.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, NamedTuple

import torch
from torch import nn

from specserve.bench.common import BenchResult, MachineInfo, chat_prompt_ids
from specserve.bench.engine_runs import median, run_single


class Bandwidth(NamedTuple):
    read_gb_s: float  # bytes read per second by a sum over a large tensor
    copy_gb_s: float  # bytes read plus bytes written per second by a large copy
    num_bytes: int  # size of the buffer measured


def measure_bandwidth(num_bytes: int = 1 << 30, repeats: int = 5, device: str = "cpu") -> Bandwidth:
    """Best of ``repeats`` (the fastest run is the one the least disturbed by other work)."""
    dev = torch.device(device)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    n = max(num_bytes // 4, 1024)
    src = torch.ones(n, dtype=torch.float32, device=dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page once before timing
    sync()
    best_sum = best_copy = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        src.sum()
        sync()
        best_sum = min(best_sum, time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best_copy = min(best_copy, time.perf_counter() - start)
    size = n * 4
    return Bandwidth(size / best_sum / 1e9, 2 * size / best_copy / 1e9, size)


def weight_bytes_per_step(model: nn.Module) -> int:
    """Bytes of parameters one decode step reads: every parameter once (tied ones once), except an
    input embedding that is not also the output head (a lookup reads one row of it)."""
    params = {p.data_ptr(): p for p in model.parameters()}
    net: Any = model
    embedding = net.get_input_embeddings() if hasattr(net, "get_input_embeddings") else None
    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else None
    head_weight = head if isinstance(head, torch.Tensor) else getattr(head, "weight", None)
    emb_weight = getattr(embedding, "weight", None)
    if emb_weight is not None and (head_weight is None or emb_weight.data_ptr() != head_weight.data_ptr()):
        params.pop(emb_weight.data_ptr(), None)
    return sum(p.numel() * p.element_size() for p in params.values())


def roofline_fields(model: nn.Module, bandwidth: Bandwidth) -> dict[str, float]:
    weight_bytes = weight_bytes_per_step(model)
    return {
        "weight_bytes_per_step": weight_bytes,
        "bandwidth_read_gb_s": round(bandwidth.read_gb_s, 2),
        "bandwidth_copy_gb_s": round(bandwidth.copy_gb_s, 2),
        "roofline_decode_tok_s": bandwidth.read_gb_s * 1e9 / weight_bytes,
    }


# ---- `specserve bench roofline` -------------------------------------------------------------------

def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="single-request runs (median)")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="buffer size of the bandwidth test")
    parser.add_argument("--json", default=None, help="write the result here")


def run(args: argparse.Namespace) -> BenchResult:
    from specserve.engine.engine import LLMEngine
    from specserve.engine.llm import build_engine_config
    from specserve.engine.model_setup import load_bundle

    machine = MachineInfo.read()
    bundle = load_bundle(args.model, args.dtype, args.device)
    bandwidth = measure_bandwidth(args.bandwidth_mib << 20, device=args.device)
    fields = roofline_fields(bundle.model, bandwidth)
    result = BenchResult("roofline", {"model": bundle.model_dir.name, "dtype": args.dtype, "device": args.device,
                                      "max_tokens": args.max_tokens, "repeats": args.repeats,
                                      "bandwidth_buffer_bytes": bandwidth.num_bytes}, machine)
    engine = LLMEngine(build_engine_config(dtype=args.dtype, device=args.device, kv_cache_memory="128MiB",
                                           max_num_seqs=1), bundle)
    prompt = chat_prompt_ids(bundle.tokenizer, 0)
    run_single(engine, prompt, 8)  # warm-up
    decode = median([run_single(engine, prompt, args.max_tokens).decode_tok_s for _ in range(args.repeats)])
    bound = fields["roofline_decode_tok_s"]
    result.rows.append({"what": "roofline (weights / read bandwidth)", "decode_tok_s": bound, "of_roofline": 1.0})
    result.rows.append({"what": "specserve, no speculation", "decode_tok_s": decode,
                        "of_roofline": decode / bound})
    result.extra.update(fields)
    after = measure_bandwidth(args.bandwidth_mib << 20, device=args.device)
    result.extra["bandwidth_after_gb_s"] = round(after.read_gb_s, 2)
    return result.finish(args)
