"""The engine on 2 gloo ranks gives exactly the single-process engine's greedy tokens, with and without
speculation: n-gram chains, MLP-speculator trees (tree masks, borrowed full embedding and head on rank 0)
and an oracle tree whose accepted path is not the first branch (KV moves on every rank); n > 1 sampling;
copy-on-write block copies on every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tp_helpers import VOCAB

from specserve import LLM, SamplingParams
from specserve.config import SpecConfig
from specserve.core.outputs import ScheduledRequest, SchedulerOutput
from specserve.request import Request
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.factory import build_spec_decoder
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import ProposalRequest

PROMPTS = [[5, 9, 3, 17, 2, 5, 9, 3], [40, 41, 8, 8, 30, 12, 7], [11, 12, 13, 11, 12, 13, 11, 12, 13, 11, 12]]
PARAMS = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
ENGINE_ARGS = {"num_kv_blocks": 64, "block_size": 4, "max_num_batched_tokens": 64}


def greedy(llm: LLM) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate([list(p) for p in PROMPTS], PARAMS)]


@pytest.fixture(scope="module")
def reference(tp_llama_dir: Path) -> list[list[int]]:
    return greedy(LLM(model=str(tp_llama_dir), **ENGINE_ARGS))


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MLP speculator that borrows the base model's embedding and head (compact checkpoint)."""
    from specserve.spec.checkpoint import save_mlp_speculator
    from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig

    model = MLPSpeculator(MLPSpeculatorConfig(emb_dim=64, vocab_size=VOCAB, n_predict=3, inner_dim=0,
                                              top_k_tokens_per_head=(3, 2, 2), n_candidates=4))
    model.reset_parameters(torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("tp-mlp")
    save_mlp_speculator(model, out, compact=True)
    return out


@pytest.fixture(scope="module")
def tp_llm(tp_llama_dir: Path, mlp_dir: Path):
    llm = LLM(model=str(tp_llama_dir), tensor_parallel_size=2, speculator=f"mlp:{mlp_dir}", speculation="on",
              **ENGINE_ARGS)
    yield llm
    llm.engine.runner.shutdown()


class OracleProposer:
    """Proposes [wrong] and [right, right, right] (from the reference): the accepted path is the second branch."""

    name = "oracle"
    needs_hidden = False

    def __init__(self, reference: list[list[int]]) -> None:
        self.reference = reference

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        trees = []
        for req in requests:
            index = next(i for i, p in enumerate(PROMPTS) if req.token_ids[:len(p)] == p)
            done = len(req.token_ids) - len(PROMPTS[index])
            right = self.reference[index][done:done + req.max_depth]
            trees.append(DraftTree.from_paths([[(right[0] + 1) % VOCAB], right]) if right else DraftTree())
        return trees

    def release(self, request_id: str) -> None:
        pass


def test_mlp_speculator_trees(tp_llm: LLM, reference: list[list[int]]) -> None:
    assert greedy(tp_llm) == reference
    assert tp_llm.stats()["spec_steps"] > 0


def test_oracle_tree_moves_accepted_kv(tp_llm: LLM, reference: list[list[int]]) -> None:
    runner = tp_llm.engine.runner
    runner.attach_speculator(SpecDecoder(OracleProposer(reference), SpeculationPolicy("on", 3, 2)), 3, 2)
    assert greedy(tp_llm) == reference
    assert runner.spec.stats.num_accepted_tokens > 0


def test_ngram(tp_llm: LLM, tp_llama_dir: Path, reference: list[list[int]]) -> None:
    runner = tp_llm.engine.runner
    decoder, depth, candidates = build_spec_decoder(SpecConfig("ngram", speculation="on"), runner.model,
                                                    tp_llama_dir, torch.float32, torch.device("cpu"))
    runner.attach_speculator(decoder, depth, candidates)
    assert greedy(tp_llm) == reference
    assert decoder.stats.num_steps > 0


def test_no_speculation(tp_llm: LLM, reference: list[list[int]]) -> None:
    tp_llm.engine.runner.spec = None
    assert greedy(tp_llm) == reference




def test_block_copies_reach_every_rank(tp_llm: LLM) -> None:
    """Copy-on-write block copies run on all ranks: a decode step over copied blocks gives the logits of the
    same step over the originals (the copy must hold each rank's own KV heads)."""
    runner = tp_llm.engine.runner
    prompt = PROMPTS[1]  # 7 tokens: two blocks of 4

    def last_logits(block_ids: list[int], num_computed: int, token_ids: list[int]) -> torch.Tensor:
        request = Request("copy-test", token_ids, SamplingParams(max_tokens=1), frozenset(), 256)
        num_new = len(token_ids) - num_computed
        step = SchedulerOutput([ScheduledRequest(request, num_computed, num_new, block_ids)], num_new, [], [])
        with torch.inference_mode():
            batch, hidden = runner.forward(step)
            return runner.model.compute_logits(hidden[batch.last_rows])

    last_logits([50, 51], 0, prompt)  # prefill into blocks the idle engine does not use
    runner.copy_blocks([(50, 60), (51, 61)])
    originals = last_logits([50, 51], len(prompt), prompt + [3])
    copies = last_logits([60, 61], len(prompt), prompt + [3])
    torch.testing.assert_close(copies, originals, rtol=0, atol=1e-6)



def test_parallel_samples(tp_llm: LLM, reference: list[list[int]]) -> None:
    tp_llm.engine.runner.spec = None
    params = SamplingParams(n=2, temperature=0.0, max_tokens=20, ignore_eos=True)
    outputs = tp_llm.generate([list(PROMPTS[1])], params)[0].outputs
    assert [o.token_ids for o in outputs] == [reference[1], reference[1]]
