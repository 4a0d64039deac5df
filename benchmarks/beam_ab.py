"""The nodes beside a single chain (spec/chain_beam.py) at a few limits, 0 for the chain alone, one
request at a time on held-out chat prompts, `auto` with prompt lookup in front (`default+ngram`),
against `off`. Engines share the weights and take turns prompt by prompt (A B C, C B A, ...); decode
tokens/s (after the first token), stop at EOS, up to 128 tokens.

    python benchmarks/beam_ab.py --num-prompts 32 --offset 0 --extras 0,4,6 [--dtype bfloat16]

Session 13 ran it with one more arm, the tree the beam replaced (the likeliest sibling and the
position-1 sibling's 2-token continuation), on the working tree before that code was removed.
"""

from __future__ import annotations

import argparse

import torch

from specserve.bench.common import conversation_ids, turn_order
from specserve.bench.engine_runs import run_single
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.train.data import default_prompt_file, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0, help="first held-out prompt")
    parser.add_argument("--extras", default="0,4,6", help="the beam's most nodes beside the chain, comma-separated")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, args.dtype, "cpu")
    convs = load_prompts(default_prompt_file("heldout"))[args.offset:args.offset + args.num_prompts]
    prompts = [conversation_ids(bundle.tokenizer, c) for c in convs]

    def engine(beam_extra: int, speculation: bool = True) -> LLMEngine:
        spec = {"speculator": "default+ngram", "speculation": "auto"} if speculation else {
            "speculator": None, "speculation": "off"}
        built = LLMEngine(build_engine_config(dtype=args.dtype, device="cpu", kv_cache_memory="256MiB",
                                              max_num_seqs=1, **spec), bundle)
        if speculation:
            built.runner.spec.proposer.model.beam_max_extra = beam_extra
        run_single(built, prompts[0], 8)  # warm-up, first step costs
        return built

    engines = {"off": engine(0, speculation=False)}
    engines.update((f"beam, {n} extra", engine(n)) for n in (int(x) for x in args.extras.split(",")))
    seconds = dict.fromkeys(engines, 0.0)
    tokens = dict.fromkeys(engines, 0)
    outputs: dict[str, list[int]] = {name: [] for name in engines}
    for turn, prompt in enumerate(prompts):
        for index in turn_order(len(engines), turn):
            name = list(engines)[index]
            run = run_single(engines[name], prompt, 128, ignore_eos=False)
            seconds[name] += run.e2e_s - run.ttft_s
            tokens[name] += run.num_tokens - 1
            outputs[name].append(run.num_tokens)
    off = tokens["off"] / seconds["off"]
    print(f"held-out chat prompts {args.offset}-{args.offset + len(prompts) - 1}, {args.dtype}, {args.threads} threads")
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
