"""Speculation never changes greedy output: every proposer, batch sizes, preemption, chunking, stops."""

from __future__ import annotations

import pytest
import torch

from specserve import LLM, SamplingParams
from specserve.sample.sampler import SamplingState
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import ProposalRequest
from specserve.spec.rejection_sampler import VerifyInput, verify

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Customer: my parcel is late. Agent:",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Hello",
    "Write a story about a robot who learns to paint, in the style of a fairy tale.",
]


def greedy(llm: LLM, prompts: list[str], max_tokens: int = 24, **kw) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, **kw)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def reference(tiny_bundle) -> list[list[int]]:
    return greedy(LLM(bundle=tiny_bundle), PROMPTS)


class OracleProposer:
    """Proposes the known greedy continuation, hidden among wrong candidates and cut short at random
    places, so that acceptance, partial acceptance, recovery and tree-path KV moves all happen."""

    name = "oracle"
    needs_hidden = False

    def __init__(self, continuations: dict[tuple[int, ...], list[int]]) -> None:
        self.continuations = continuations
        self.calls = 0

    def propose(self, requests: list[ProposalRequest], hidden) -> list[DraftTree]:
        trees = []
        for req in requests:
            self.calls += 1
            truth = self._truth(req.token_ids)
            depth = min(req.max_depth, 3)
            if not truth or depth <= 0:
                trees.append(DraftTree())
                continue
            good = truth[:depth]
            if self.calls % 3 == 0 and len(good) > 1:  # wrong from the second token on
                good = good[:1] + [(good[1] + 1) % 1000 + 1]
            wrong = [(t + 7) % 1000 + 1 for t in good]
            paths = [wrong, [good[0]] + wrong[1:], good] if self.calls % 2 else [good, wrong]
            trees.append(DraftTree.from_paths(paths[:req.num_candidates]))
        return trees

    def _truth(self, tokens: list[int]) -> list[int]:
        for prompt, cont in self.continuations.items():
            full = list(prompt) + cont
            if tokens[:len(full)] == full[:len(tokens)] and len(tokens) >= len(prompt):
                return full[len(tokens):]
        return []

    def release(self, request_id: str) -> None:
        pass


@pytest.mark.parametrize("speculator", ["ngram", "mlp", "medusa", "mlp+ngram"])
@pytest.mark.parametrize("batch", [1, 5])
def test_proposers_are_lossless(tiny_bundle, reference, random_mlp_dir, random_medusa_dir, speculator,
                                batch) -> None:
    spec = {"ngram": "ngram", "mlp": str(random_mlp_dir), "medusa": f"medusa:{random_medusa_dir}",
            "mlp+ngram": f"{random_mlp_dir}+ngram"}[speculator]
    llm = LLM(bundle=tiny_bundle, speculator=spec, speculation="on")
    got = [greedy(llm, [p])[0] for p in PROMPTS] if batch == 1 else greedy(llm, PROMPTS)
    assert got == reference
    assert llm.stats()["spec_steps"] > 0


@pytest.mark.parametrize("depth,candidates", [(None, 1), (5, 1), (5, 3)])
def test_tied_mlp_past_n_predict_is_lossless(tiny_bundle, reference, random_tied_mlp_dir, depth,
                                             candidates) -> None:
    # n_predict 2, lookahead 4 in its config; depth 5 asks for one stage more than the config says
    llm = LLM(bundle=tiny_bundle, speculator=str(random_tied_mlp_dir), speculation="on",
              num_speculative_tokens=depth, num_candidates=candidates)
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    assert len(stats["spec_acceptance_per_stage"]) == (depth or 4)  # drafts reached the last stage


def oracle_llm(tiny_bundle, reference, candidates: int = 3, **engine_args) -> tuple[LLM, OracleProposer]:
    llm = LLM(bundle=tiny_bundle, **engine_args)
    conts = {tuple(llm.tokenizer.encode(p)): ref for p, ref in zip(PROMPTS, reference)}
    proposer = OracleProposer(conts)
    llm.engine.runner.attach_speculator(SpecDecoder(proposer, SpeculationPolicy("on", 3, candidates)), 3,
                                        candidates)
    return llm, proposer


@pytest.mark.parametrize("engine_args", [
    dict(), dict(num_kv_blocks=12, max_num_seqs=5), dict(max_num_batched_tokens=6), dict(block_size=4),
], ids=["plain", "preemption", "chunked", "small-blocks"])
def test_oracle_trees_accept_and_stay_exact(tiny_bundle, reference, engine_args) -> None:
    llm, _ = oracle_llm(tiny_bundle, reference, **engine_args)
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    assert stats["spec_accepted_tokens"] > 0
    assert stats["mean_accepted_tokens_per_step"] > 1.3
    # The KV of accepted tree paths was moved: running again (prefix hits on those blocks) still matches.
    assert greedy(llm, PROMPTS) == reference


def test_prefix_cache_holds_accepted_kv(tiny_bundle, reference) -> None:
    """Blocks filled through speculation are reused by a later request whose prompt is that text."""
    llm, _ = oracle_llm(tiny_bundle, reference)
    first = greedy(llm, PROMPTS[:1], max_tokens=24)[0]
    plain = LLM(bundle=tiny_bundle)
    prompt_ids = llm.tokenizer.encode(PROMPTS[0]) + first
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    a = llm.generate({"prompt_token_ids": prompt_ids}, params)[0]
    b = plain.generate({"prompt_token_ids": prompt_ids}, params)[0]
    assert a.num_cached_tokens > 0
    assert a.outputs[0].token_ids == b.outputs[0].token_ids


def test_max_tokens_and_stop_strings_under_speculation(tiny_bundle, reference) -> None:
    llm, _ = oracle_llm(tiny_bundle, reference)
    for n in (1, 2, 5, 7):
        assert greedy(llm, PROMPTS, max_tokens=n) == [r[:n] for r in reference]
    plain = LLM(bundle=tiny_bundle)
    base = plain.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    stop = base.text[6:9]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])
    a = llm.generate(PROMPTS[0], params)[0].outputs[0]
    b = plain.generate(PROMPTS[0], params)[0].outputs[0]
    assert a.text == b.text and a.finish_reason == b.finish_reason == "stop"
    assert len(a.token_ids) == len(b.token_ids)


def test_abort_during_speculation_frees_blocks(tiny_bundle, reference) -> None:
    llm, _ = oracle_llm(tiny_bundle, reference)
    engine = llm.engine
    engine.add_request("x", PROMPTS[0], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    for _ in range(4):
        engine.step()
    assert engine.scheduler.requests["x"].spec_token_ids
    engine.abort_request("x")
    engine.step()
    assert engine.kv.num_used_blocks == 0


def test_metrics_reported(tiny_bundle, reference) -> None:
    llm, _ = oracle_llm(tiny_bundle, reference)
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    m = out.metrics
    assert m["spec_steps"] > 0 and m["spec_proposed_tokens"] >= m["spec_accepted_tokens"] > 0
    assert m["mean_accepted_tokens_per_step"] > 1.0
    stats = llm.stats()
    for key in ("spec_steps", "spec_proposed_tokens", "spec_accepted_tokens", "mean_accepted_tokens_per_step",
                "spec_acceptance_per_stage", "spec_accepted_length_histogram"):
        assert key in stats
    assert sum(stats["spec_accepted_length_histogram"].values()) == stats["spec_steps"]
    # the speculator's cost is timed on the steps that proposed drafts, against the base step
    assert stats["spec_proposal_ms_per_step"] > 0 and 0 < stats["spec_proposal_time_share"] < 100


@pytest.mark.parametrize("penalties", [
    dict(repetition_penalty=1.4, presence_penalty=0.6, frequency_penalty=0.4),
    dict(min_tokens=20, stop_token_ids=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
], ids=["penalties", "min-tokens"])
def test_penalties_and_min_tokens_under_speculation(tiny_bundle, penalties) -> None:
    """Penalties and min_tokens under speculation give plain decoding's tokens: the oracle proposes the
    penalised greedy continuation, which is accepted and comes out unchanged (the unit tests below
    build the cases where a draft row's own path changes its penalty)."""
    params = SamplingParams(temperature=0, max_tokens=24, **penalties)
    plain = LLM(bundle=tiny_bundle)
    reference = [list(o.outputs[0].token_ids) for o in plain.generate(PROMPTS, params)]
    llm = LLM(bundle=tiny_bundle)
    conts = {tuple(llm.tokenizer.encode(p)): ref for p, ref in zip(PROMPTS, reference)}
    llm.engine.runner.attach_speculator(SpecDecoder(OracleProposer(conts), SpeculationPolicy("on", 3, 3)), 3, 3)
    assert [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params)] == reference
    assert llm.stats()["spec_accepted_tokens"] > 0
    assert llm.stats()["kv_blocks_in_use"] == 0


def _one_hot_rows(rows: list[dict[int, float]], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(rows), vocab)
    for i, row in enumerate(rows):
        for token, value in row.items():
            logits[i, token] = value
    return logits


def test_a_draft_row_is_penalised_for_the_tokens_of_its_path() -> None:
    # Drafts 5, 5. Row 0 (the real token's) picks 5. Row 1 (after the first draft) prefers 5 by 2.0 to
    # 1.9 for token 3, but 5 is in its path: with repetition penalty 1.4 it drops to ~1.43, so token 3.
    params = SamplingParams(temperature=0, repetition_penalty=1.4)
    state = SamplingState(params, [1, 2], [4])
    logits = _one_hot_rows([{5: 2.0}, {5: 2.0, 3: 1.9}, {5: 2.0}])
    result = verify(logits, [VerifyInput(DraftTree.chain([5, 5]), state, 0)], eos_token_ids=[0])[0]
    assert result.token_ids == [5, 3] and result.accepted_nodes == [0]


def test_min_tokens_counts_each_draft_rows_depth() -> None:
    # One token out, min_tokens 3: EOS (0, the favourite everywhere) is barred at the real row and the
    # first draft's row (2 tokens out), allowed at the second draft's row (3 out), so the bonus is EOS.
    params = SamplingParams(temperature=0, min_tokens=3)
    state = SamplingState(params, [1, 2], [4])
    logits = _one_hot_rows([{0: 3.0, 6: 1.0}, {0: 3.0, 7: 1.0}, {0: 3.0, 8: 1.0}])
    result = verify(logits, [VerifyInput(DraftTree.chain([6, 7]), state, 0)], eos_token_ids=[0])[0]
    assert result.token_ids == [6, 7, 0]
