"""Chain siblings: the second-best token of the chain's stages, verified beside the chain."""

from __future__ import annotations

import pytest
import torch
from test_spec_lossless import PROMPTS, OracleProposer, greedy

from specserve import LLM
from specserve.model.fast_linear import enable_fast_linear
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.head_proposer import HeadProposer
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.spec.policy import Level, SpeculationPolicy
from specserve.spec.proposer import ProposalRequest
from specserve.spec.siblings import chain_length, chain_with_siblings


def test_siblings_hang_on_the_chain_by_path_probability() -> None:
    tree = chain_with_siblings([10, 11, 12], [20, 21, 22], [-1.0, -0.5, -3.0], count=2)
    # the chain first, then the two likeliest siblings, each under the chain node before its position
    assert tree.token_ids == [10, 11, 12, 21, 20]
    assert tree.parents == [-1, 0, 1, 0, -1]
    assert chain_length(tree) == 3
    # no sibling where the head had none (-1) or where it repeats the chain's token; count 0: the chain
    tree = chain_with_siblings([10, 11, 12], [-1, 11, 22], [0.0, 0.0, -2.0], count=3)
    assert tree.token_ids == [10, 11, 12, 22] and tree.parents == [-1, 0, 1, 1]
    assert chain_with_siblings([10, 11], [20, 21], [-1.0, -1.0], count=0) == DraftTree.chain([10, 11])
    assert chain_length(DraftTree.from_paths([[1, 2], [3]])) == 2


def random_speculator(dtype: torch.dtype, head_vocab: int = 0, zero_head: bool = False) -> MLPSpeculator:
    model = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, tie_weights=True, scale_input=True,
                                              head_vocab_size=head_vocab, num_lookahead_tokens=5))
    model.reset_parameters(torch.Generator().manual_seed(3))
    if zero_head:  # every logit 0: every row ties
        with torch.no_grad():
            for head in model.head:
                head.weight.zero_()
    if head_vocab:
        model.vocab_map = torch.randperm(200, generator=torch.Generator().manual_seed(4))[:head_vocab].sort().values
    model = model.to(dtype).eval()
    enable_fast_linear(model)
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_vocab", [0, 64])
def test_kernel_siblings_match_pytorch(dtype: torch.dtype, head_vocab: int) -> None:
    model = random_speculator(dtype, head_vocab)
    hidden = torch.randn(16, 48, generator=torch.Generator().manual_seed(5)).to(dtype)
    last = torch.randint(0, 200, (16,), generator=torch.Generator().manual_seed(6))
    want = model.propose_chain_siblings(hidden, last, 5)
    # the PyTorch path: the chain is propose_paths' chain, the sibling each stage's second token
    assert torch.equal(want.tokens, model.propose_paths(hidden, last, [1] * 5, 1)[0][:, 0])
    assert not (want.siblings == want.tokens).any()
    assert (want.sibling_logp[:, 1:] < want.sibling_logp[:, :1]).all()  # a path only loses probability
    if not model.attach_cpu_chain():
        pytest.skip("the CPU speculator kernel is not built here")
    got = model.propose_chain_siblings(hidden, last, 5)
    same = (got.tokens == want.tokens).all(1) & (got.siblings == want.siblings).all(1)
    # float32 differs only in summation order; bfloat16 rounds where PyTorch rounds (rare one-ulp flips)
    assert same.float().mean().item() == 1.0 if dtype == torch.float32 else same.float().mean().item() >= 0.8
    torch.testing.assert_close(got.sibling_logp[same], want.sibling_logp[same], rtol=0,
                               atol=1e-4 if dtype == torch.float32 else 0.15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_vocab", [0, 64])
def test_kernel_breaks_ties_as_pytorch(dtype: torch.dtype, head_vocab: int) -> None:
    """A head of zeros ties every row: the best is the first index, the runner-up the second (torch.max's
    first index on ties, then the first of the others), for the chain, its siblings and the runner-up."""
    model = random_speculator(dtype, head_vocab, zero_head=True)
    hidden = torch.randn(4, 48, generator=torch.Generator().manual_seed(5)).to(dtype)
    last = torch.randint(0, 200, (4,), generator=torch.Generator().manual_seed(6))
    want = model.propose_chain_siblings(hidden, last, 5, runner_up_depth=3)
    first, second = model.head_to_vocab(torch.tensor(0)), model.head_to_vocab(torch.tensor(1))
    assert (want.tokens == first).all() and (want.siblings == second).all()
    if not model.attach_cpu_chain():
        pytest.skip("the CPU speculator kernel is not built here")
    got = model.propose_chain_siblings(hidden, last, 5, runner_up_depth=3)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.siblings, want.siblings)
    assert torch.equal(got.runner_up, want.runner_up)


def test_the_position_one_sibling_carries_the_runner_up_chain() -> None:
    # the chain 10 11 12; siblings 20 (position 1) and 22; the runner-up chain 20 30 31 hangs under 20
    tree = chain_with_siblings([10, 11, 12], [20, 21, 22], [-1.0, -4.0, -2.0], count=2, runner_up=[20, 30, 31])
    assert tree.token_ids == [10, 11, 12, 20, 22, 30, 31]
    assert tree.parents == [-1, 0, 1, -1, 1, 3, 5]
    assert chain_length(tree) == 3
    # no continuation when the position-1 sibling is not among the chosen, or is not the chain's start
    assert chain_with_siblings([10, 11], [20, 21], [-5.0, -1.0], count=1, runner_up=[20, 30]).token_ids == [10, 11, 21]
    assert chain_with_siblings([10, 11], [20, 21], [-1.0, -5.0], count=1, runner_up=[25, 30]).token_ids == [10, 11, 20]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_vocab", [0, 64])
def test_runner_up_chain_starts_with_the_first_sibling_and_matches_pytorch(dtype: torch.dtype,
                                                                         head_vocab: int) -> None:
    model = random_speculator(dtype, head_vocab)
    hidden = torch.randn(16, 48, generator=torch.Generator().manual_seed(5)).to(dtype)
    last = torch.randint(0, 200, (16,), generator=torch.Generator().manual_seed(6))
    plain = model.propose_chain_siblings(hidden, last, 5)
    want = model.propose_chain_siblings(hidden, last, 5, runner_up_depth=3)
    assert torch.equal(want.tokens, plain.tokens) and torch.equal(want.siblings, plain.siblings)
    assert want.runner_up is not None and want.runner_up.shape == (16, 3)
    assert torch.equal(want.runner_up[:, 0], want.siblings[:, 0])
    # the runner-up chain is the chain the stages follow from that token: the same as running the
    # speculator's stages by hand from the first stage's state
    with torch.inference_mode():
        state, _ = model.step(0, model.input_state(hidden), last)
        tokens = want.runner_up[:, 0]
        for i in range(1, 3):
            state, logits = model.step(i, state, tokens)
            tokens = model.head_to_vocab(logits.float().argmax(-1))
            assert torch.equal(tokens, want.runner_up[:, i])
    if not model.attach_cpu_chain():
        pytest.skip("the CPU speculator kernel is not built here")
    got = model.propose_chain_siblings(hidden, last, 5, runner_up_depth=3)
    same = (got.runner_up == want.runner_up).all(1)
    assert same.float().mean().item() == 1.0 if dtype == torch.float32 else same.float().mean().item() >= 0.8


def test_sibling_chains_are_lossless(tiny_bundle, random_tied_mlp_dir) -> None:
    reference = greedy(LLM(bundle=tiny_bundle), PROMPTS)
    llm = LLM(bundle=tiny_bundle, speculator=str(random_tied_mlp_dir), speculation="on", num_candidates=1,
              chain_siblings=2)
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    # a chain alone drafts at most 4 tokens (the tied speculator's lookahead); two siblings beside it
    assert stats["spec_proposed_tokens"] > 4 * stats["spec_steps"]


class SiblingOracle(OracleProposer):
    """Chains whose second token is wrong, with the right one as that position's sibling, so that the
    accepted path ends on a sibling (its KV is moved to the chain's slot) in every other step."""

    name = "sibling-oracle"

    def propose(self, requests: list[ProposalRequest], hidden) -> list[DraftTree]:
        trees = []
        for req in requests:
            self.calls += 1
            truth = self._truth(req.token_ids)[:min(req.max_depth, 3)]
            if len(truth) < 3:
                trees.append(DraftTree.chain(truth))
                continue
            wrong = [(t + 7) % 1000 + 1 for t in truth]
            chain = [truth[0], wrong[1], wrong[2]] if self.calls % 2 else truth
            trees.append(chain_with_siblings(chain, [wrong[0], truth[1], wrong[2] + 1], [-2.0, -1.0, -3.0], 2))
        return trees


@pytest.mark.parametrize("engine_args", [dict(), dict(num_kv_blocks=12, max_num_seqs=5), dict(block_size=4)],
                         ids=["plain", "preemption", "small-blocks"])
def test_accepted_siblings_stay_exact_and_are_priced(tiny_bundle, engine_args) -> None:
    plain = LLM(bundle=tiny_bundle)
    reference = greedy(plain, PROMPTS, max_tokens=32)
    llm = LLM(bundle=tiny_bundle, **engine_args)
    proposer = SiblingOracle({tuple(llm.tokenizer.encode(p)): ref for p, ref in zip(PROMPTS, reference)})
    policy = SpeculationPolicy("on", 3, 1)
    llm.engine.runner.attach_speculator(SpecDecoder(proposer, policy), 3, 1)
    assert greedy(llm, PROMPTS, max_tokens=32) == reference
    assert greedy(llm, PROMPTS, max_tokens=32) == reference  # prefix hits on blocks filled that way
    # half the chains were rescued by their second-position sibling: the chain's own figures say the
    # second position fails half the time, and the rescues are priced on top of the chain
    assert 0.2 < policy.sibling_rescue < 0.8
    rates = policy.global_chain_rates()
    assert rates[0] > 0.9 and 0.2 < rates[1] < 0.8
    rescue = policy.sibling_rescue
    with_rescue = policy.expected(Level(3, 1), None)[0]
    policy.sibling_rescue = 0.0
    assert with_rescue == pytest.approx(policy.expected(Level(3, 1), None)[0] + rescue)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_the_policy_prices_a_chain_with_the_nodes_its_siblings_add(depth: int) -> None:
    # What the proposer says a chain carries besides its own tokens is what its trees hold at most,
    # and held for some requests; the policy's prior node count for the level includes it.
    proposer = HeadProposer("mlp", random_speculator(torch.float32), [1, 1, 1], 1, torch.float32,
                            torch.device("cpu"), chain_siblings=1)
    hidden = torch.randn(32, 48, generator=torch.Generator().manual_seed(7))
    requests = [ProposalRequest(f"r{i}", [i % 200], 1, depth, 1) for i in range(32)]
    sizes = [len(tree) for tree in proposer.propose(requests, hidden)]
    extra = proposer.chain_extra_nodes(depth)
    assert extra == 1 + min(2, depth - 1)
    assert max(sizes) == depth + extra
    policy = SpeculationPolicy("auto", 5, 1, chain_extra_nodes=proposer.chain_extra_nodes)
    assert policy.expected(Level(depth, 1), None)[1] == depth + extra
    assert SpeculationPolicy("auto", 5, 1).expected(Level(depth, 1), None)[1] == depth
