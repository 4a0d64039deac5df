"""The position-1 sibling's continuation (the runner-up chain), 0 to N tokens, one request at a time on
held-out chat prompts, `auto` with one sibling and prompt lookup in front (`default+ngram`), against
`off`. Engines share the weights and take turns prompt by prompt; decode tokens/s (after the first
token), stop at EOS, up to 128 tokens, float32.

    python benchmarks/runner_up_ab.py --num-prompts 32 --offset 0 --lengths 0,1,2,4
"""

from __future__ import annotations

import argparse

import torch

from specserve.bench.common import conversation_ids
from specserve.bench.engine_runs import run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.train.data import default_prompt_file, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0, help="first held-out prompt")
    parser.add_argument("--lengths", default="0,1,2,4", help="continuation tokens, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, "float32", "cpu")
    convs = load_prompts(default_prompt_file("heldout"))[args.offset:args.offset + args.num_prompts]
    prompts = [conversation_ids(bundle.tokenizer, c) for c in convs]

    def engine(length: int | None) -> LLMEngine:
        spec = {"speculator": None, "speculation": "off"} if length is None else {
            "speculator": "default+ngram", "speculation": "auto"}
        built = LLMEngine(build_engine_config(dtype="float32", device="cpu", kv_cache_memory="256MiB",
                                              max_num_seqs=1, **spec), bundle)
        if length is not None:
            built.runner.spec.proposer.model.runner_up_continuation = length
        run_single(built, prompts[0], 8)  # warm-up, first step costs
        return built

    engines = {"off": engine(None)}
    engines.update((f"continuation {n}", engine(n)) for n in (int(x) for x in args.lengths.split(",")))
    seconds = dict.fromkeys(engines, 0.0)
    tokens = dict.fromkeys(engines, 0)
    outputs: dict[str, list[int]] = {name: [] for name in engines}
    for prompt in prompts:
        for name, eng in engines.items():
            run = run_single(eng, prompt, 128, ignore_eos=False)
            seconds[name] += run.e2e_s - run.ttft_s
            tokens[name] += run.num_tokens - 1
            outputs[name].append(run.num_tokens)
    off = tokens["off"] / seconds["off"]
    print(f"held-out chat prompts {args.offset}-{args.offset + len(prompts) - 1}, float32, {args.threads} threads")
    for name, eng in engines.items():
        rate = tokens[name] / seconds[name]
        line = f"{name:16s} decode {rate:6.1f} tok/s  {rate / off:.3f}x off"
        if name != "off":
            stats = eng.stats()
            line += (f"  {stats['mean_accepted_tokens_per_step']:.3f} tokens/step, speculator "
                     f"{stats['spec_proposal_ms_per_step']:.2f} ms/step, same lengths as off: "
                     f"{outputs[name] == outputs['off']}")
        print(line)


if __name__ == "__main__":
    main()
