"""The one interface every speculator implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specserve.spec.draft_tree import DraftTree


@dataclass(slots=True)
class ProposalRequest:
    """What a proposer may look at for one request."""

    request_id: str
    token_ids: list[int]  # prompt + output, the just-sampled token last
    num_prompt_tokens: int
    max_depth: int  # at most this many tokens along any path
    # at most this many root-to-leaf paths, besides a single chain's siblings (spec/siblings.py)
    num_candidates: int


class Proposer(Protocol):
    name: str
    # True when propose() reads the base model's hidden state of the row that produced the last token.
    needs_hidden: bool

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        """One draft tree per request (possibly empty); hidden is [len(requests), hidden_size]."""
        ...

    def release(self, request_id: str) -> None:
        """Forget per-request state (called when a request finishes or is preempted)."""
        ...


def hidden_rows(hidden: torch.Tensor | None, index: list[int], num_requests: int) -> torch.Tensor | None:
    """The hidden-state rows of the requests at ``index`` (ascending) out of ``num_requests``, for
    a proposer that serves only some of them; no copy when it serves them all."""
    if hidden is None or len(index) == num_requests:
        return hidden
    return hidden[torch.tensor(index, device=hidden.device)]
