"""Prompt lookup where the text repeats itself, a trained speculator everywhere else.

A speculator trained on chat answers guesses poorly when the answer copies its prompt (rewrites,
corrections, code edits): on the shipped SmolLM2 speculator a rewrite prompt accepts ~0.3 drafts per
step, prompt lookup ~1.6. Prompt lookup alone guesses poorly on free text (three steps in four accept
nothing on held-out chat). So each request, each step, takes the lookup's continuation when its
latest tokens repeat an earlier n-gram of at least ``min_match`` tokens (a copy in progress), and the
speculator's proposal otherwise. Both are exact: verification does not care where drafts come from.
"""

from __future__ import annotations

import torch

from specserve.spec.draft_tree import DraftTree
from specserve.spec.ngram import NgramProposer
from specserve.spec.proposer import ProposalRequest, Proposer, hidden_rows


class LookupFirstProposer:
    def __init__(self, model: Proposer, min_match: int = 2) -> None:
        self.model = model
        self.lookup = NgramProposer(min_ngram=min_match)  # matches shorter than min_match are not tried
        self.name = f"{model.name}+ngram"
        self.needs_hidden = model.needs_hidden
        self.num_lookup_proposals = 0  # requests-steps served by the lookup (the rest by the model)

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        trees = [DraftTree() for _ in requests]
        rest: list[int] = []
        for i, req in enumerate(requests):
            paths = self.lookup.match(req)
            if paths:
                trees[i] = DraftTree.from_paths(paths)
                self.num_lookup_proposals += 1
            else:
                rest.append(i)
        if rest:
            sub_hidden = hidden_rows(hidden, rest, len(requests))
            for i, tree in zip(rest, self.model.propose([requests[i] for i in rest], sub_hidden)):
                trees[i] = tree
        return trees

    def chain_extra_nodes(self, depth: int) -> int:
        """As the model's (a lookup draft is a bare chain; the model's are priced, the dearer)."""
        extra = getattr(self.model, "chain_extra_nodes", None)
        return extra(depth) if extra is not None else 0

    def stats(self) -> dict[str, int]:
        return {"spec_lookup_proposals": self.num_lookup_proposals}

    def release(self, request_id: str) -> None:
        self.model.release(request_id)
        self.lookup.release(request_id)
