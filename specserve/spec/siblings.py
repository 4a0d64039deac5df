"""Chain siblings: a single-chain draft plus the second-best token at its most likely positions, for
Medusa heads (an MLP speculator's chain carries the nodes of a beam instead, ``spec/chain_beam.py``).

Why: on held-out chat the shipped MLP speculator's first draft is wrong in ~45% of steps, and its
second choice is right in a fifth of those (teacher-forced on held-out phase-2 shards, `benchmarks/
sibling_gain.py`: +0.11 accepted tokens per step for a sibling at position 1, +0.17 for the best two).
A sibling costs one more verified row and no speculator work (the heads already computed the logits it
comes from). Medusa heads read only the base hidden state, so a sibling has no continuation of its own:
the later heads would propose the same tokens after it.

Siblings are leaves, the tree the chain's nodes first (node k-1 is the chain's k-th token), then the
siblings, each hung on the chain node before its position, so ``chain_length`` tells the chain apart
and the policy can price both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from specserve.spec.draft_tree import DraftTree


def default_chain_siblings(device: torch.device) -> int:
    """Siblings per chain when ``--chain-siblings`` is not given: one on a CPU, none elsewhere (for an
    MLP speculator, any number above 0 means the beam's nodes beside the chain).

    On the 2-core EPYC, one request, 16 held-out chat prompts, the MLP speculator's forced 5-token chain
    (session 10, `benchmarks/siblings_ab.py`, removed in session 13): 1.88x of plain decoding without
    siblings, 1.97x with one, 1.90x with two, 1.74x with three (2.25 / 2.43 / 2.47 / 2.49 tokens per
    step). A GPU has not run them: there the proposal runs as PyTorch ops, a few more per stage than
    the chain's own.
    """
    return 1 if torch.device(device).type == "cpu" else 0


class ChainProposal(NamedTuple):
    """Per request (rows) and chain position (columns)."""

    tokens: torch.Tensor  # [b, depth]: each stage's best token, fed to the next stage
    siblings: torch.Tensor  # [b, depth]: each stage's second-best token (-1: none)
    sibling_logp: torch.Tensor  # [b, depth]: log-probability of the chain before it, then it


def chain_with_siblings(tokens: list[int], siblings: list[int], sibling_logp: list[float], count: int) -> DraftTree:
    """The chain, then its ``count`` most likely siblings (by path log-probability) as leaves."""
    tree = DraftTree.chain(tokens)
    ranked = sorted(((logp, k) for k, (sib, logp) in enumerate(zip(siblings, sibling_logp))
                     if sib >= 0 and sib != tokens[k]), reverse=True)
    for _, k in ranked[:count]:
        tree.token_ids.append(siblings[k])
        tree.parents.append(k - 1)
    return tree


def chain_length(tree: DraftTree) -> int:
    """How many leading nodes form one chain (node j's parent is node j-1)."""
    length = 0
    for node, parent in enumerate(tree.parents):
        if parent != node - 1:
            break
        length += 1
    return length
