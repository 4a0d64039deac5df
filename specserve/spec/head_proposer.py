"""Proposer for speculators that read the base model's hidden state (MLP speculator, Medusa)."""

from __future__ import annotations

import torch
from torch import nn

from specserve.model.fast_linear import enable_fast_linear
from specserve.spec.chain_beam import BEAM_WIDTH, MAX_EXTRA_NODES, beam_extra_nodes, chain_with_beam
from specserve.spec.draft_tree import DraftTree
from specserve.spec.proposer import ProposalRequest
from specserve.spec.siblings import chain_with_siblings


def speculator_dtype(base_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the speculator runs in: bfloat16 under a float32 base model on a CPU with bfloat16
    kernels, the base model's dtype otherwise.

    Drafts need not be float32: verification by the base model keeps the output exact whatever they
    are, and the speculators are trained under bfloat16 autocast anyway. Its products read half the
    bytes: the shipped 5-stage chain costs ~2.2 ms per step in float32 and ~1.0 ms in bfloat16 on the
    2-core EPYC, against a ~20 ms float32 decode step.
    """
    if base_dtype != torch.float32 or torch.device(device).type != "cpu":
        return base_dtype
    from specserve.kernels.build import load_library

    kernels = load_library()
    return torch.bfloat16 if kernels is not None and kernels.gemm_packed_bf16 is not None else base_dtype


class HeadProposer:
    needs_hidden = True

    def __init__(self, name: str, model: nn.Module, top_k: list[int], num_candidates: int,
                 dtype: torch.dtype, device: torch.device, chain_siblings: int = 0) -> None:
        """``dtype``: the speculator's own (see ``speculator_dtype``); hidden states are cast to it.
        ``chain_siblings``: nodes beside each single chain: for an MLP speculator, above 0, those of a beam
        over its stages (``spec/chain_beam.py``); for Medusa heads, the second-best tokens of that many
        positions (``spec/siblings.py``)."""
        self.name = name
        self.model = model.to(device=device, dtype=dtype).eval()
        enable_fast_linear(self.model)  # its few-row products go to the CPU kernel, as the base model's
        if hasattr(self.model, "attach_cpu_chain"):
            self.model.attach_cpu_chain()  # single-chain proposals in one kernel call
        if model.vocab_map is not None:
            model.vocab_map = model.vocab_map.to(device)
        # Medusa: one head per token; an MLP speculator: its lookahead (tied stages may repeat).
        self.max_depth: int = model.n_predict if hasattr(model, "n_predict") else model.config.max_depth
        self.top_k = list(top_k)[:self.max_depth] + [1] * max(0, self.max_depth - len(top_k))
        self.num_candidates = num_candidates
        self.dtype = dtype
        self.beam_width = BEAM_WIDTH if chain_siblings and hasattr(self.model, "propose_beam") else 0
        self.chain_siblings = chain_siblings if self.beam_width or hasattr(self.model, "propose_chain_siblings") else 0
        self.beam_max_extra = MAX_EXTRA_NODES

    def chain_extra_nodes(self, depth: int) -> int:
        """Nodes a single chain of ``depth`` tokens carries at most besides its own."""
        if not self.chain_siblings or depth <= 0:
            return 0
        if self.beam_width:
            return beam_extra_nodes(depth, self.beam_max_extra)
        return min(self.chain_siblings, depth)

    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        assert hidden is not None
        depth = min(self.max_depth, max((r.max_depth for r in requests), default=0))
        if depth <= 0:
            return [DraftTree() for _ in requests]
        num_paths = max(r.num_candidates for r in requests)
        # A single chain needs only each stage's best token; trees widen by the configured top-k.
        top_k = [1] * depth if num_paths == 1 else self.top_k[:depth]
        last = torch.tensor([r.token_ids[-1] for r in requests], device=hidden.device)
        if num_paths == 1 and self.beam_width and self.beam_max_extra > 0:
            extra = [beam_extra_nodes(r.max_depth, self.beam_max_extra) for r in requests]
            # With at most E nodes beside the chain, a stage needs only the chain's row and E others, and
            # a row only its E + 1 best tokens: a wider beam gives the same trees, ties aside (a child's path is
            # never likelier than its parent's). Short chains at high load keep the speculator cheap.
            width = min(self.beam_width, 1 + max(extra))
            beam = self.model.propose_beam(hidden.to(self.dtype), last, depth, width)
            tokens, logp, source = (t.tolist() for t in beam)
            return [chain_with_beam(tokens[i][:r.max_depth], logp[i][:r.max_depth], source[i][:r.max_depth],
                                    extra[i]) if r.max_depth > 0 else DraftTree()
                    for i, r in enumerate(requests)]
        if num_paths == 1 and self.chain_siblings and not self.beam_width:
            chains = self.model.propose_chain_siblings(hidden.to(self.dtype), last, depth)
            tokens, siblings, logp = chains.tokens.tolist(), chains.siblings.tolist(), chains.sibling_logp.tolist()
            return [chain_with_siblings(tokens[i][:r.max_depth], siblings[i][:r.max_depth], logp[i][:r.max_depth],
                                        self.chain_siblings) if r.max_depth > 0 else DraftTree()
                    for i, r in enumerate(requests)]
        paths, _ = self.model.propose_paths(hidden.to(self.dtype), last, top_k, num_paths)
        rows = paths.tolist()
        trees = []
        for req, candidates in zip(requests, rows):
            chosen = [p[:req.max_depth] for p in candidates[:req.num_candidates]] if req.max_depth > 0 else []
            trees.append(DraftTree.from_paths(chosen))
        return trees

    def release(self, request_id: str) -> None:
        pass
