"""Prompt lookup first, the model-based speculator for every request whose output does not repeat."""

from __future__ import annotations

import torch

from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.lookup_first import LookupFirstProposer
from specserve.spec.policy import SpeculationPolicy
from specserve.spec.proposer import ProposalRequest, hidden_rows


class RecordingProposer:
    """Stands in for the MLP speculator: proposes the hidden row's first value, and records its input."""

    name = "model"
    needs_hidden = True

    def __init__(self) -> None:
        self.seen: list[tuple[list[str], torch.Tensor]] = []

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        assert hidden is not None and len(hidden) == len(requests)
        self.seen.append(([r.request_id for r in requests], hidden.clone()))
        return [DraftTree.chain([int(row[0])] * r.max_depth) for r, row in zip(requests, hidden)]

    def release(self, request_id: str) -> None:
        pass


def request(rid: str, tokens: list[int], depth: int = 4) -> ProposalRequest:
    return ProposalRequest(rid, tokens, num_prompt_tokens=3, max_depth=depth, num_candidates=1)


def test_repeated_bigram_takes_the_lookup_and_the_rest_go_to_the_model_with_their_rows() -> None:
    model = RecordingProposer()
    proposer = LookupFirstProposer(model, min_match=2)
    assert proposer.name == "model+ngram" and proposer.needs_hidden
    requests = [
        request("copy", [5, 6, 7, 8, 9, 1, 2, 5, 6]),  # ends in "5 6", seen before: "7 8 9 1" followed
        request("free", [10, 11, 12, 13, 14]),  # nothing repeats
        request("one", [20, 21, 22, 21]),  # only a 1-token match: below min_match
        request("short", [5, 6, 7, 5, 6], depth=2),  # depth caps the lookup's draft
    ]
    hidden = torch.arange(4, dtype=torch.float32).view(4, 1) * 100 + torch.zeros(4, 3)
    trees = proposer.propose(requests, hidden)
    assert trees[0].token_ids == [7, 8, 9, 1] and trees[0].parents == [-1, 0, 1, 2]
    assert trees[3].token_ids == [7, 5]
    # the model saw only the two requests without a match, with their own hidden rows, in order
    (ids, rows), = model.seen
    assert ids == ["free", "one"]
    assert torch.equal(rows, hidden[[1, 2]])
    assert trees[1].token_ids == [100] * 4 and trees[2].token_ids == [200] * 4
    assert proposer.num_lookup_proposals == 2
    # llm.stats() reports it, beside the engine-wide counters
    stats = SpecDecoder(proposer, SpeculationPolicy("on", 4, 1)).stats_dict()
    assert stats["spec_lookup_proposals"] == 2 and stats["spec_steps"] == 0


def test_all_lookups_skip_the_model() -> None:
    model = RecordingProposer()
    proposer = LookupFirstProposer(model, min_match=2)
    trees = proposer.propose([request("a", [1, 2, 3, 1, 2])], torch.zeros(1, 3))
    assert trees[0].token_ids == [3, 1, 2] and model.seen == []


def test_hidden_rows_selects_in_order_and_does_not_copy_when_every_request_is_served() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(4, 3)
    assert hidden_rows(hidden, [0, 1, 2, 3], 4) is hidden
    assert torch.equal(hidden_rows(hidden, [1, 3], 4), hidden[[1, 3]])
    assert hidden_rows(None, [1], 4) is None
