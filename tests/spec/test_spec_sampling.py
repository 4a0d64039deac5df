"""Speculative sampling keeps the base model's distribution exactly (statistical tests)."""

from __future__ import annotations

import math

import pytest
import torch

from specserve import LLM, SamplingParams
from specserve.sample.sampler import SamplingState
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import ProposalRequest
from specserve.spec.rejection_sampler import VerifyInput, verify


def chi_square_p_value(counts: list[int], probs: list[float]) -> float:
    """Pearson chi-square goodness of fit, bins with expected < 5 pooled; p-value via Wilson-Hilferty."""
    total = sum(counts)
    pooled_obs, pooled_exp, obs_acc, exp_acc = [], [], 0, 0.0
    for c, p in sorted(zip(counts, probs), key=lambda x: x[1]):
        obs_acc += c
        exp_acc += p * total
        if exp_acc >= 5:
            pooled_obs.append(obs_acc)
            pooled_exp.append(exp_acc)
            obs_acc, exp_acc = 0, 0.0
    if exp_acc > 0 and pooled_exp:
        pooled_obs[-1] += obs_acc
        pooled_exp[-1] += exp_acc
    stat = sum((o - e) ** 2 / e for o, e in zip(pooled_obs, pooled_exp))
    dof = max(len(pooled_exp) - 1, 1)
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("tree", [
    DraftTree.chain([3, 5]),
    DraftTree.from_paths([[3, 1], [4, 2], [1, 1]]),
    DraftTree.from_paths([[0], [1], [2], [3], [4], [5], [6], [7]]),  # every likely token is a candidate
])
def test_verify_first_token_matches_target_distribution(tree: DraftTree) -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = 8
    logits = torch.randn(1 + len(tree), vocab, generator=gen) * 1.5
    params = SamplingParams(temperature=1.0, max_tokens=10)
    state = SamplingState(params, [1], [], torch.Generator().manual_seed(1))
    counts = [0] * vocab
    for _ in range(2500):
        result = verify(logits, [VerifyInput(tree, state, 0)], [])[0]
        counts[result.token_ids[0]] += 1
    probs = torch.softmax(logits[0], -1).tolist()
    assert chi_square_p_value(counts, probs) > 1e-3


def test_verify_test_detects_a_wrong_distribution() -> None:
    """The statistic has teeth: sampling at temperature 1 fails against the temperature-0.7 target."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, generator=gen) * 1.5
    state = SamplingState(SamplingParams(temperature=1.0), [1], [], torch.Generator().manual_seed(1))
    counts = [0] * 8
    for _ in range(2500):
        counts[verify(logits, [VerifyInput(DraftTree.chain([3, 5]), state, 0)], [])[0].token_ids[0]] += 1
    assert chi_square_p_value(counts, torch.softmax(logits[0] / 0.7, -1).tolist()) < 1e-3


class RandomTreeProposer:
    """Random trees over the small vocabulary: acceptance, rejection and recovery all happen."""

    name = "random-tree"
    needs_hidden = False

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.gen = torch.Generator().manual_seed(5)

    def propose(self, requests: list[ProposalRequest], hidden) -> list[DraftTree]:
        trees = []
        for req in requests:
            paths = [torch.randint(1, self.vocab, (max(req.max_depth, 0),), generator=self.gen).tolist()
                     for _ in range(req.num_candidates)]
            trees.append(DraftTree.from_paths([p for p in paths if p]))
        return trees

    def release(self, request_id: str) -> None:
        pass


def test_engine_sampling_with_speculation_matches_model_distribution(small_vocab_dir) -> None:
    """Second and third output tokens under speculation vs the exact marginals from the model."""
    from transformers import AutoModelForCausalLM

    llm = LLM(model=str(small_vocab_dir), max_num_seqs=128)
    vocab = llm.engine.m.vocab_size
    llm.engine.runner.attach_speculator(
        SpecDecoder(RandomTreeProposer(vocab), SpeculationPolicy("on", 2, 6)), 2, 6)
    prompt = [1, 5, 9, 2]
    params = SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": prompt}] * 1000, params)
    assert llm.stats()["spec_accepted_tokens"] > 0
    seconds = [o.outputs[0].token_ids[1] for o in outs]

    hf = AutoModelForCausalLM.from_pretrained(small_vocab_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        p1 = torch.softmax(hf(torch.tensor([prompt])).logits[0, -1].double(), -1)  # [V]
        batch = torch.tensor([prompt + [t] for t in range(vocab)])
        p2_given = torch.softmax(hf(batch).logits[:, -1].double(), -1)  # [V, V]
    marginal2 = (p1.unsqueeze(1) * p2_given).sum(0).tolist()
    counts = [seconds.count(t) for t in range(vocab)]
    assert chi_square_p_value(counts, marginal2) > 1e-3
