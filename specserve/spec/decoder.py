"""Speculation inside the model runner: verify last step's drafts, propose next step's.

The runner calls ``verify`` with the logits of every sampled request's real-token row and draft rows,
then ``propose`` with the hidden state of the row that produced each request's last token. The KV of
rejected drafts needs no cleanup: those slots lie past ``num_computed_tokens`` and are overwritten or
released (the scheduler truncates the block table). Accepted nodes of a tree that are not already at
the front of the draft slots are moved there by the runner, so the cache holds exactly the accepted
path afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from specserve.spec.draft_tree import DraftTree
from specserve.spec.policy import Level, SpeculationPolicy
from specserve.spec.proposer import ProposalRequest, Proposer, hidden_rows
from specserve.spec.rejection_sampler import VerifyInput, VerifyResult, verify
from specserve.spec.siblings import chain_length


@dataclass
class SpecStats:
    """Engine-wide speculation counters (steps with at least one draft token)."""

    num_steps: int = 0
    num_proposed_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0
    proposed_at_depth: Counter[int] = field(default_factory=Counter)
    accepted_at_depth: Counter[int] = field(default_factory=Counter)
    accepted_length_histogram: Counter[int] = field(default_factory=Counter)
    # Over the engine steps that proposed drafts: seconds in the proposer and in the base step itself.
    num_proposing_steps: int = 0
    proposal_seconds: float = 0.0
    base_step_seconds: float = 0.0

    def record(self, tree: DraftTree, result: VerifyResult) -> None:
        self.num_steps += 1
        self.num_proposed_tokens += len(tree)
        self.num_accepted_tokens += len(result.accepted_nodes)
        self.num_emitted_tokens += len(result.token_ids)
        max_depth = _max_depth(tree)
        for depth in range(1, max_depth + 1):
            self.proposed_at_depth[depth] += 1
        for depth in range(1, len(result.accepted_nodes) + 1):
            self.accepted_at_depth[depth] += 1
        self.accepted_length_histogram[len(result.accepted_nodes)] += 1

    def record_step_time(self, base_seconds: float, proposal_seconds: float) -> None:
        if proposal_seconds > 0.0:
            self.num_proposing_steps += 1
            self.proposal_seconds += proposal_seconds
            self.base_step_seconds += base_seconds

    def as_dict(self) -> dict[str, Any]:
        depths = sorted(self.proposed_at_depth)
        return {
            "spec_steps": self.num_steps,
            "spec_proposed_tokens": self.num_proposed_tokens,
            "spec_accepted_tokens": self.num_accepted_tokens,
            "spec_emitted_tokens": self.num_emitted_tokens,
            "mean_accepted_tokens_per_step": (self.num_emitted_tokens / self.num_steps) if self.num_steps else None,
            # Stage d: of the steps that proposed a token at depth d, how many accepted one there.
            "spec_acceptance_per_stage": [self.accepted_at_depth[d] / self.proposed_at_depth[d] for d in depths],
            "spec_accepted_length_histogram": dict(sorted(self.accepted_length_histogram.items())),
            # The speculator's cost: its time per proposing step against the base model's step time.
            "spec_proposal_ms_per_step": (1e3 * self.proposal_seconds / self.num_proposing_steps
                                          if self.num_proposing_steps else None),
            "spec_proposal_time_share": (self.proposal_seconds / self.base_step_seconds
                                         if self.base_step_seconds > 0 else None),
        }


def _max_depth(tree: DraftTree) -> int:
    depth: list[int] = []
    for parent in tree.parents:
        depth.append(1 if parent < 0 else depth[parent] + 1)
    return max(depth, default=0)


class SpecDecoder:
    def __init__(self, proposer: Proposer, policy: SpeculationPolicy) -> None:
        self.proposer = proposer
        self.policy = policy
        self.stats = SpecStats()
        self.levels: dict[str, Level] = {}  # the level each request's pending drafts were made at
        self.last_proposal_seconds = 0.0  # time spent proposing in the latest step (the engine subtracts it)

    def verify(self, logits: torch.Tensor, request_ids: list[str], inputs: list[VerifyInput],
               eos_token_ids: list[int]) -> list[VerifyResult]:
        results = verify(logits, inputs, eos_token_ids)
        for rid, item, result in zip(request_ids, inputs, results):
            if len(item.tree):
                self.stats.record(item.tree, result)
                level = self.levels.get(rid)
                if level is not None:
                    chain = chain_length(item.tree)  # the nodes beside a chain come after it
                    on_chain = sum(1 for node in result.accepted_nodes if node < chain)
                    self.policy.observe_request(rid, level, len(result.token_ids), len(item.tree), chain, on_chain)
        return results

    def choose(self, request_ids: list[str], num_other_tokens: int) -> list[Level]:
        """The speculation level of each request for the next step (remembered for verification)."""
        levels = self.policy.choose(request_ids, num_other_tokens)
        for rid, level in zip(request_ids, levels):
            self.levels[rid] = level
        return levels

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        """Drafts for requests whose level (set by ``choose`` this step) speculates; ``hidden`` holds
        their rows in the same order."""
        index: list[int] = []  # the requests that speculate, by position
        for i, req in enumerate(requests):
            level = self.levels[req.request_id]
            req.max_depth = min(req.max_depth, level.depth)
            req.num_candidates = level.candidates
            if req.max_depth > 0:
                index.append(i)
        trees = [DraftTree() for _ in requests]
        if index:
            active = [requests[i] for i in index]
            started = time.perf_counter()
            proposed = self.proposer.propose(active, hidden_rows(hidden, index, len(requests)))
            self.last_proposal_seconds = time.perf_counter() - started
            self.policy.observe_proposal(self.levels[active[0].request_id], len(active), self.last_proposal_seconds)
            for i, tree in zip(index, proposed):
                trees[i] = tree
        return trees

    def stats_dict(self) -> dict[str, Any]:
        """The engine-wide counters, and the proposer's own where it keeps some (prompt lookup: how
        many request-steps it served)."""
        proposer_stats = getattr(self.proposer, "stats", None)
        return {**self.stats.as_dict(), **(proposer_stats() if proposer_stats else {}),
                # times `auto` stopped drafting at a batch size where drafting delivered less than plain steps
                "spec_outcome_holds": self.policy.outcome.num_holds}

    def release(self, request_id: str) -> None:
        self.levels.pop(request_id, None)
        self.policy.release(request_id)
        self.proposer.release(request_id)
