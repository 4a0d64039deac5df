"""Noise check at 32 requests: no speculator, the speculator with speculation off, and auto, side by side.

    python benchmarks/ab_spec_overhead_c32.py

Three engines on the default model (bfloat16, 2 threads), 32 distinct chat prompts, 128 tokens, EOS
ignored; 3 interleaved rounds, each engine's best kept. The first two do identical work, so their gap
is the machine's noise.
"""

import torch

from specserve.bench.common import chat_prompt_ids
from specserve.bench.engine_runs import run_concurrent
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle

torch.set_num_threads(2)
bundle = load_bundle(None, "bfloat16")
prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(32)]
cfgs = {"none": {}, "spec-off": dict(speculator="default", speculation="off"), "spec-auto": dict(speculator="default", speculation="auto")}
engs = {k: LLMEngine(build_engine_config(dtype="bfloat16", kv_cache_memory="1GiB", max_num_seqs=32, max_num_batched_tokens=1024, **v), bundle) for k, v in cfgs.items()}
for e in engs.values():
    run_concurrent(e, prompts, 8)  # warm-up
best = {}
for r in range(3):
    for k, e in engs.items():
        e.kv.reset_prefix_cache()
        s, t = run_concurrent(e, prompts, 128)
        best[k] = max(best.get(k, 0), t / s)
print({k: round(v, 1) for k, v in best.items()}, {k: round(v / best["none"], 3) for k, v in best.items()})
