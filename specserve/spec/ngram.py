"""Prompt lookup: match the last n tokens against the request's own history and propose what followed.

No model and no training. The latest earlier occurrence wins (recent text is the likeliest to repeat);
longer matches are tried first (``max_ngram`` down to ``min_ngram``). Several candidates come from
several distinct earlier occurrences of the matched n-gram.
"""

from __future__ import annotations

import torch

from specserve.spec.draft_tree import DraftTree
from specserve.spec.proposer import ProposalRequest


class NgramProposer:
    name = "ngram"
    needs_hidden = False

    def __init__(self, min_ngram: int = 1, max_ngram: int = 4, max_lookback: int = 4096) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError("need 1 <= min_ngram <= max_ngram")
        self.min_ngram = min_ngram
        self.max_ngram = max_ngram
        self.max_lookback = max_lookback

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        return [self._propose_one(r) for r in requests]

    def release(self, request_id: str) -> None:
        pass

    def _propose_one(self, req: ProposalRequest) -> DraftTree:
        paths = self.match(req)
        return DraftTree.from_paths(paths) if paths else DraftTree()

    def match(self, req: ProposalRequest) -> list[list[int]]:
        """The continuations after the longest suffix n-gram found earlier (min_ngram tokens at least);
        empty when none is."""
        if req.max_depth <= 0:
            return []
        tokens = req.token_ids[-self.max_lookback:]
        num = len(tokens)
        for n in range(min(self.max_ngram, num - 1), self.min_ngram - 1, -1):
            suffix = tokens[num - n:]
            paths: list[list[int]] = []
            # Scan right to left over earlier occurrences of the suffix.
            last = suffix[-1]
            for start in range(num - n - 1, -1, -1):
                if tokens[start + n - 1] == last and tokens[start:start + n] == suffix:
                    follow = tokens[start + n:start + n + req.max_depth]
                    if follow and follow not in paths:
                        paths.append(follow)
                        if len(paths) >= req.num_candidates:
                            break
            if paths:
                return paths
        return []
