"""Decode latency and throughput on CUDA: eager vs captured decode graphs, with and without speculation.

Usage (repo root):
    PYTHONPATH=. python benchmarks/gpu_decode.py [--model DIR | --random-llama-1b] [--json OUT]

Per setup (graphs off/on x speculator): TTFT, inter-token latency p50/p90, single-request decode tok/s,
total tok/s at each concurrency, the acceptance histogram of speculative setups, and peak GPU memory.
Greedy, exactly --max-tokens tokens per request (EOS ignored), so every setup does the same work.
`--random-llama-1b` writes a random-weight ~1.1B Llama (Llama-3.2-1B-like shape, SmolLM2's tokenizer)
first: its text is noise, so speculation is left out there; it measures the kernels at a real size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from specserve.bench.common import chat_prompt_ids
from specserve.bench.engine_runs import median, percentile, run_concurrent, run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.model.loader import resolve_model_dir

LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0)


def write_random_llama(out: Path, dtype: torch.dtype, device: str = "cuda") -> Path:
    """A random Llama in HF layout (safetensors written directly: no transformers init, seconds on a GPU)."""
    from safetensors.torch import save_file

    tok_dir = resolve_model_dir(None)
    vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
    c = LLAMA_1B
    h, kv = c["hidden_size"], c["num_key_value_heads"] * c["hidden_size"] // c["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (c["intermediate_size"], h),
                       p + "mlp.up_proj.weight": (c["intermediate_size"], h),
                       p + "mlp.down_proj.weight": (h, c["intermediate_size"])})
    gen = torch.Generator(device=device).manual_seed(0)
    tensors = {name: (torch.ones(shape) if name.endswith("norm.weight")
                      else torch.randn(shape, generator=gen, device=device) * 0.02).to(dtype).cpu()
               for name, shape in shapes.items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    eos = json.loads((tok_dir / "config.json").read_text()).get("eos_token_id", 2)
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": eos,
        "torch_dtype": str(dtype).removeprefix("torch."), **c}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, out / name)
    return out


def bench_setup(bundle: Any, prompts: list[list[int]], args: argparse.Namespace, graphs: bool,
                speculator: str | None) -> dict[str, Any]:
    max_seqs = max(args.concurrency)
    extra = {"speculator": speculator, "speculation": "on"} if speculator else {}
    engine = LLMEngine(build_engine_config(dtype=args.dtype, device="cuda", max_num_seqs=max_seqs,
                                           kv_cache_memory=args.kv_cache_memory, **extra), bundle)
    capture_s = None
    if graphs:
        start = time.perf_counter()
        if not engine.runner.enable_cuda_graphs(max_seqs, engine.max_model_len):
            return {"setup": "graphs unavailable (needs CUDA and Triton)"}
        capture_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    run_single(engine, prompts[0], 8)  # warm-up (Triton compiles for the eager shapes)
    run_concurrent(engine, prompts[:max_seqs], 8)
    before = engine.stats()
    singles = [run_single(engine, prompts[i % len(prompts)], args.max_tokens) for i in range(args.repeats)]
    after = engine.stats()
    gaps = [g for r in singles for g in r.itl_s]
    row: dict[str, Any] = {
        "setup": f"{'graphs' if graphs else 'eager'} + {speculator or 'no speculation'}",
        "ttft_ms_p50": 1e3 * median([r.ttft_s for r in singles]),
        "itl_ms_p50": 1e3 * percentile(gaps, 50), "itl_ms_p90": 1e3 * percentile(gaps, 90),
        "single_decode_tok_s": median([r.decode_tok_s for r in singles]),
    }
    for n in args.concurrency:
        seconds, tokens = run_concurrent(engine, prompts[:n], args.max_tokens)
        row[f"total_tok_s_{n}"] = tokens / seconds
    steps = after.get("spec_steps", 0) - before.get("spec_steps", 0)
    if steps:
        emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
        hist = Counter(after.get("spec_accepted_length_histogram", {}))
        hist.subtract(before.get("spec_accepted_length_histogram", {}))
        row["mean_tokens_per_step"] = emitted / steps
        row["accepted_histogram"] = {int(k): v for k, v in sorted(hist.items()) if v}
    row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    row["graph_capture_s"] = capture_s
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model folder or .gguf (default: the embedded SmolLM2)")
    parser.add_argument("--random-llama-1b", action="store_true", help="a random ~1.1B Llama instead")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speculators", default="none,ngram,default", help="comma list; none = plain decode")
    parser.add_argument("--kv-cache-memory", default="8GiB")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    if not torch.cuda.is_available():
        print("gpu_decode: no CUDA device", file=sys.stderr)
        return 2
    model = args.model
    if args.random_llama_1b:
        folder = Path(tempfile.mkdtemp(prefix="llama-1b-"))
        model = str(write_random_llama(folder, getattr(torch, args.dtype)))
        args.speculators = "none"
    bundle = load_bundle(model, args.dtype, "cuda")
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(max(args.concurrency))]
    specs = [None if s == "none" else s for s in args.speculators.split(",")]
    rows = [bench_setup(bundle, prompts, args, graphs, spec) for spec in specs for graphs in (False, True)]
    config = {"model": bundle.model_dir.name, "dtype": args.dtype, "max_tokens": args.max_tokens,
              "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "num_params": sum(p.numel() for p in bundle.model.parameters())}
    print(json.dumps(config))
    for row in rows:
        print(json.dumps(row, default=str))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"config": config, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
