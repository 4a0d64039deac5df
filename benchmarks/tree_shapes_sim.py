"""Offline: accepted tokens per step of draft-tree shapes beside the shipped speculator's 5-token chain,
greedy, on held-out chat prompts, walked step by step as decoding walks (each step starts where the
last one's accepted path ended). No timing: what each shape would accept, and its node count.

Shapes: the sibling tree (the chain, its likeliest sibling by path probability, and the position-1
sibling's 2-token continuation: what spec/chain_beam.py replaced) and the beam of spec/chain_beam.py at
widths 2-4 with 3, 4 or 6 nodes beside the chain. The base model's answers come from the engine
(greedy, 128 tokens, stop at EOS), its hidden states from transformers on the same weights.

    python benchmarks/tree_shapes_sim.py --offset 0 --num-prompts 40
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from specserve.bench.common import conversation_ids
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle
from specserve.sampling_params import SamplingParams
from specserve.train.data import default_prompt_file, load_prompts

DEPTH = 5
Paths = set[tuple[int, ...]]


class Walker:
    def __init__(self, speculator: torch.nn.Module) -> None:
        self.spec = speculator

    @torch.no_grad()
    def children(self, state: torch.Tensor, token: int, stage: int, k: int) -> tuple[torch.Tensor, list[tuple[int, float]]]:
        """Stage ``stage`` on (state, token) -> (its new state, its k best (token, log-probability))."""
        new_state, logits = self.spec.step(stage, state, torch.tensor([token]))
        logp = torch.log_softmax(logits.float(), -1)[0]
        values, index = logp.topk(k)
        return new_state, list(zip(self.spec.head_to_vocab(index).tolist(), values.tolist()))

    def sibling_tree(self, state: torch.Tensor, token: int) -> Paths:
        paths: Paths = set()
        path: tuple[int, ...] = ()
        cum, siblings, first_state = 0.0, [], None
        for d in range(DEPTH):
            state, top = self.children(state, token, d, 2)
            first_state = state if d == 0 else first_state
            (best, best_lp), (second, second_lp) = top
            siblings.append((cum + second_lp, d, path + (second,)))
            cum, path, token = cum + best_lp, path + (best,), best
            paths.add(path)
        _, d, sibling = max(siblings)
        paths.add(sibling)
        if d == 0:  # the position-1 sibling's continuation, 2 tokens
            st, tok, cont = first_state, sibling[0], sibling
            for stage in (1, 2):
                st, top = self.children(st, tok, stage, 1)
                tok = top[0][0]
                cont = cont + (tok,)
                paths.add(cont)
        return paths

    def beam(self, state: torch.Tensor, token: int, width: int, extra: int) -> Paths:
        """As spec/chain_beam.py: row 0 the chain, rows 1.. the best other candidates of the stage before;
        the chain, then the ``extra`` likeliest other candidates under their parents."""
        candidates: dict[tuple[int, ...], float] = {}
        rows = [((), 0.0, state, token)]
        chain: tuple[int, ...] = ()
        for d in range(DEPTH):
            kids = []
            for r, (path, cum, st, tok) in enumerate(rows):
                new_state, top = self.children(st, tok, d, width)
                kids += [(cum + lp, path + (t,), new_state, t, r == 0 and rank == 0) for rank, (t, lp) in enumerate(top)]
            chain_kid = next(kid for kid in kids if kid[4])
            chain = chain_kid[1]
            others = sorted((kid for kid in kids if not kid[4]), key=lambda kid: -kid[0])
            candidates.update((kid[1], kid[0]) for kid in others)
            rows = [(kid[1], kid[0], kid[2], kid[3]) for kid in [chain_kid] + others[:width - 1]]
        paths = {chain[:i + 1] for i in range(DEPTH)}
        for path, _ in sorted(candidates.items(), key=lambda item: -item[1]):
            if len(paths) >= DEPTH + extra:
                break
            if len(path) == 1 or path[:-1] in paths:
                paths.add(path)
        return paths


def accepted(paths: Paths, truth: list[int]) -> int:
    n = 0
    while n < len(truth) and tuple(truth[:n + 1]) in paths:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--num-prompts", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(None, "float32", "cpu")
    engine = LLMEngine(build_engine_config(dtype="float32", device="cpu", kv_cache_memory="1GiB", max_num_seqs=1,
                                           speculator="default", speculation="auto"), bundle)
    walker = Walker(engine.runner.spec.proposer.model)
    spec_dtype = next(walker.spec.parameters()).dtype
    hf = AutoModelForCausalLM.from_pretrained(bundle.model_dir, torch_dtype=torch.float32).eval()
    shapes: dict[str, Callable[[torch.Tensor, int], Paths]] = {"sibling tree": walker.sibling_tree}
    for width in (2, 3, 4):
        for extra in (3, 4, 6):
            shapes[f"beam {width} wide, {extra} nodes"] = (
                lambda w, e: lambda state, token: walker.beam(state, token, w, e))(width, extra)
    totals = {name: [0, 0, 0] for name in shapes}  # steps, tokens, nodes
    convs = load_prompts(default_prompt_file("heldout"))[args.offset:args.offset + args.num_prompts]
    for n, conv in enumerate(convs):
        ids = conversation_ids(bundle.tokenizer, conv)
        engine.add_request(f"r{n}", {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=128))
        out: list[int] = []
        while engine.has_unfinished_requests():
            for result in engine.step():
                if result.finished:
                    out = list(result.outputs[0].token_ids)
        with torch.no_grad():
            hidden = hf.model(torch.tensor([ids + out])).last_hidden_state[0]
        for name, shape in shapes.items():
            j = 0  # out[j] was just produced; the hidden state that predicted it is at position len(ids) + j - 1
            while j < len(out) - 1:
                state = walker.spec.input_state(hidden[len(ids) + j - 1:len(ids) + j].to(spec_dtype))
                paths = shape(state, out[j])
                a = min(accepted(paths, out[j + 1:j + 1 + DEPTH]), len(out) - 1 - j)
                totals[name][0] += 1
                totals[name][1] += a + 1
                totals[name][2] += len(paths)
                j += a + 1
    print(f"held-out chat prompts {args.offset}-{args.offset + len(convs) - 1}, greedy, a {DEPTH}-token chain")
    for name, (steps, tokens, nodes) in totals.items():
        print(f"  {name:26s} {tokens / steps:.3f} tokens per step, {nodes / steps:.1f} nodes")


if __name__ == "__main__":
    main()
