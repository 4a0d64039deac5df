"""The nodes beside an MLP speculator's chain: a beam over its stages (spec/chain_beam.py)."""

from __future__ import annotations

import pytest
import torch
from test_spec_lossless import PROMPTS, greedy

from specserve import LLM
from specserve.model.fast_linear import enable_fast_linear
from specserve.spec.chain_beam import MAX_EXTRA_NODES, chain_with_beam
from specserve.spec.head_proposer import HeadProposer
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.spec.policy import Level, SpeculationPolicy
from specserve.spec.proposer import ProposalRequest
from specserve.spec.siblings import chain_length


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


def inputs(count: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = torch.randn(count, 48, generator=torch.Generator().manual_seed(5)).to(dtype)
    return hidden, torch.randint(0, 200, (count,), generator=torch.Generator().manual_seed(6))


def path_of(tokens: torch.Tensor, source: torch.Tensor, i: int, j: int, k: int) -> list[int]:
    """One request's candidate (stage i, row j, rank k) and the candidates it continues, root first."""
    width = source.shape[1]
    path = [int(tokens[i, j, k])]
    while i > 0:
        src = int(source[i, j])
        i, j, k = i - 1, src // width, src % width
        path.insert(0, int(tokens[i, j, k]))
    return path


def test_the_beam_is_the_chain_and_the_likeliest_other_paths_the_stages_score() -> None:
    model = random_speculator(torch.float32)
    hidden, last = inputs(6, torch.float32)
    width, depth = 3, 4
    tokens, logp, source = model.propose_beam(hidden, last, depth, width)
    assert tokens.shape == (6, depth, width, width) and source.shape == (6, depth, width)
    # row 0 rank 0 at every stage is the chain
    assert torch.equal(tokens[:, :, 0, 0], model.propose_paths(hidden, last, [1] * depth, 1)[0][:, 0])
    assert (source[:, 0, 0] == 0).all() and (source[:, 0, 1:] == -1).all() and (tokens[:, 0, 1:] == -1).all()
    for r in range(6):
        for i in range(depth):
            for j in range(width if i else 1):
                # each row holds the `width` best tokens of the stage run along its path, with the path's
                # log-probability, as running the stages by hand gives it
                for k in range(width):
                    path = path_of(tokens[r], source[r], i, j, k)
                    with torch.inference_mode():
                        state, prev, want = model.input_state(hidden[r:r + 1]), last[r:r + 1], 0.0
                        for stage, token in enumerate(path):
                            state, logits = model.step(stage, state, prev)
                            row = torch.log_softmax(logits.float(), -1)[0]
                            want += float(row[token])
                            prev = torch.tensor([token])
                        assert token == int(row.topk(width).indices[k])
                    assert float(logp[r, i, j, k]) == pytest.approx(want, abs=1e-4)
            if i + 1 < depth:
                # the next stage's rows: the chain's candidate, then the best others by path probability
                others = sorted(range(1, width * width), key=lambda c: -float(logp[r, i].flatten()[c]))
                assert source[r, i + 1].tolist() == [0] + others[:width - 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_vocab", [0, 64])
def test_kernel_beam_matches_pytorch(dtype: torch.dtype, head_vocab: int) -> None:
    model = random_speculator(dtype, head_vocab)
    hidden, last = inputs(16, dtype)
    want = model.propose_beam(hidden, last, 5, 4)
    if not model.attach_cpu_chain():
        pytest.skip("the CPU speculator kernel is not built here")
    got = model.propose_beam(hidden, last, 5, 4)
    same = (got[0] == want[0]).flatten(1).all(1) & (got[2] == want[2]).flatten(1).all(1)
    # float32 differs only in summation order; bfloat16 rounds where PyTorch rounds (rare one-ulp flips)
    assert same.float().mean().item() == 1.0 if dtype == torch.float32 else same.float().mean().item() >= 0.8
    finite = torch.isfinite(want[1][same])
    assert torch.equal(finite, torch.isfinite(got[1][same]))
    torch.testing.assert_close(got[1][same][finite], want[1][same][finite], rtol=0,
                               atol=1e-4 if dtype == torch.float32 else 0.15)
    # and the chain kernel gives the beam's chain
    assert torch.equal(model.propose_paths(hidden, last, [1] * 5, 1)[0][:, 0][same], got[0][:, :, 0, 0][same])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_vocab", [0, 64])
def test_kernel_breaks_ties_as_pytorch(dtype: torch.dtype, head_vocab: int) -> None:
    """A head of zeros ties every row: its candidates are the first head rows in order (torch.max's first
    index on ties, then the first of the others), and every later row follows the first others."""
    model = random_speculator(dtype, head_vocab, zero_head=True)
    hidden, last = inputs(4, dtype)
    want = model.propose_beam(hidden, last, 5, 3)
    first_rows = model.head_to_vocab(torch.arange(3))
    assert (want[0][:, :, 0] == first_rows).all()
    assert (want[2][:, 1:] == torch.tensor([0, 1, 2])).all()
    if not model.attach_cpu_chain():
        pytest.skip("the CPU speculator kernel is not built here")
    got = model.propose_beam(hidden, last, 5, 3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[2], want[2])
    assert torch.equal(model.propose_paths(hidden, last, [1] * 5, 1)[0][:, 0], want[0][:, :, 0, 0])


def test_the_tree_is_the_chain_then_the_likeliest_candidates_under_their_parents() -> None:
    # width 2, depth 3: stage 0 has the root's row; rows of later stages continue a candidate before
    tokens = [[[10, 20], [-1, -1]], [[11, 21], [30, 31]], [[12, 22], [40, 41]]]
    logp = [[[-0.1, -1.0], [float("-inf")] * 2], [[-0.2, -2.5], [-1.2, -3.0]], [[-0.3, -2.8], [-1.5, -4.0]]]
    source = [[0, -1], [0, 1], [0, 2]]  # stage 1 row 1 continues 20; stage 2 row 1 continues 30
    tree = chain_with_beam(tokens, logp, source, extra=3)
    assert tree.token_ids == [10, 11, 12, 20, 30, 40]
    assert tree.parents == [-1, 0, 1, -1, 3, 4]
    assert chain_length(tree) == 3
    # stage 2 row 1 continuing 21 instead: 21 comes in before its child; extra 0: the chain alone
    logp[2][1] = [-2.6, -4.0]
    tree = chain_with_beam(tokens, logp, [[0, -1], [0, 1], [0, 1]], extra=4)
    assert tree.token_ids == [10, 11, 12, 20, 30, 21, 40]
    assert tree.parents == [-1, 0, 1, -1, 3, 0, 5]
    assert chain_with_beam(tokens, logp, source, extra=0).token_ids == [10, 11, 12]
    # a request cut to depth 1: the chain's first token and the root's other candidates
    assert chain_with_beam(tokens[:1], logp[:1], source[:1], extra=1).token_ids == [10, 20]


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_the_policy_prices_a_chain_with_the_nodes_beside_it(depth: int) -> None:
    # What the proposer says a chain carries besides its own tokens is what its trees hold at most,
    # and held for some requests; the policy's prior node count for the level includes it.
    proposer = HeadProposer("mlp", random_speculator(torch.float32), [1, 1, 1], 1, torch.float32,
                            torch.device("cpu"), chain_siblings=1)
    hidden = torch.randn(32, 48, generator=torch.Generator().manual_seed(7))
    requests = [ProposalRequest(f"r{i}", [i % 200], 1, depth, 1) for i in range(32)]
    trees = proposer.propose(requests, hidden)
    extra = proposer.chain_extra_nodes(depth)
    assert extra == min(depth, MAX_EXTRA_NODES)
    assert max(len(tree) for tree in trees) == depth + extra
    assert all(chain_length(tree) == depth for tree in trees)
    policy = SpeculationPolicy("auto", 5, 1, chain_extra_nodes=proposer.chain_extra_nodes)
    assert policy.expected(Level(depth, 1), None)[1] == depth + extra
    assert SpeculationPolicy("auto", 5, 1).expected(Level(depth, 1), None)[1] == depth


@pytest.mark.parametrize("engine_args", [dict(), dict(num_kv_blocks=12, max_num_seqs=5),
                                         dict(max_num_batched_tokens=6), dict(block_size=4)],
                         ids=["plain", "preemption", "chunked", "small-blocks"])
def test_beam_chains_are_lossless(tiny_bundle, random_tied_mlp_dir, engine_args) -> None:
    reference = greedy(LLM(bundle=tiny_bundle), PROMPTS)
    llm = LLM(bundle=tiny_bundle, speculator=str(random_tied_mlp_dir), speculation="on", num_candidates=1,
              chain_siblings=1, **engine_args)
    assert llm.engine.runner.spec.proposer.beam_width > 1
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    assert stats["spec_steps"] > 0
    if "max_num_batched_tokens" not in engine_args:  # a 6-token step budget leaves little room for drafts
        # a chain alone drafts at most 4 tokens (the tied speculator's lookahead); the beam's nodes beside it
        assert stats["spec_proposed_tokens"] > 4 * stats["spec_steps"]


def test_a_path_that_leaves_the_chain_counts_against_the_chain_and_for_the_rescue() -> None:
    # Every step the chain's first token is wrong and a path beside it gives three tokens: the chain's
    # first position learns that it fails, and the rescue is worth those three tokens, not one.
    policy = SpeculationPolicy("auto", 5, 1, chain_extra_nodes=lambda depth: depth)
    for _ in range(200):
        policy.observe_request("r0", Level(3, 1), emitted=4, num_nodes=6, chain_drafts=3, chain_accepted=0)
    assert policy.global_chain_rates()[0] < 0.1
    assert policy.sibling_rescue == pytest.approx(3.0, abs=0.01)
    # a chain that holds: no rescue
    for _ in range(200):
        policy.observe_request("r0", Level(3, 1), emitted=4, num_nodes=6, chain_drafts=3, chain_accepted=3)
    assert policy.sibling_rescue < 0.01 and policy.global_chain_rates()[0] > 0.9


@pytest.mark.parametrize("extra", [1, 2, 3])
def test_a_beam_one_wider_than_the_nodes_kept_gives_the_same_trees(extra: int) -> None:
    model = random_speculator(torch.float32)
    hidden, last = inputs(16, torch.float32)

    def trees(width: int) -> list[tuple[list[int], list[int]]]:
        tokens, logp, source = (t.tolist() for t in model.propose_beam(hidden, last, 5, width))
        built = [chain_with_beam(tokens[r], logp[r], source[r], extra) for r in range(16)]
        return [(tree.token_ids, tree.parents) for tree in built]

    assert trees(extra + 1) == trees(6)
    assert all(len(ids) == 5 + extra for ids, _ in trees(extra + 1))


def test_no_nodes_beside_the_chain_is_the_chain_alone() -> None:
    proposer = HeadProposer("mlp", random_speculator(torch.float32), [1, 1, 1], 1, torch.float32,
                            torch.device("cpu"), chain_siblings=1)
    proposer.beam_max_extra = 0
    hidden = torch.randn(4, 48, generator=torch.Generator().manual_seed(7))
    requests = [ProposalRequest(f"r{i}", [i], 1, 3, 1) for i in range(4)]
    trees = proposer.propose(requests, hidden)
    chains = proposer.model.propose_paths(hidden, torch.arange(4), [1] * 3, 1)[0][:, 0].tolist()
    assert [tree.token_ids for tree in trees] == chains and proposer.chain_extra_nodes(3) == 0
