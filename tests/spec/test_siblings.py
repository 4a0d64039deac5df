"""Chain siblings: the second-best token of the chain's positions, verified beside the chain (Medusa
heads; the pricing of nodes beside a chain, whichever proposer adds them)."""

from __future__ import annotations

import pytest
from test_spec_lossless import PROMPTS, OracleProposer, greedy

from specserve import LLM
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
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


def test_medusa_sibling_chains_are_lossless(tiny_bundle, random_medusa_dir) -> None:
    reference = greedy(LLM(bundle=tiny_bundle), PROMPTS)
    llm = LLM(bundle=tiny_bundle, speculator=f"medusa:{random_medusa_dir}", speculation="on", num_candidates=1,
              chain_siblings=2)
    proposer = llm.engine.runner.spec.proposer
    assert proposer.chain_siblings == 2 and not proposer.beam_width
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    depth = proposer.max_depth
    # a chain alone drafts at most one token a head; two siblings beside it
    assert stats["spec_proposed_tokens"] > depth * stats["spec_steps"]


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
