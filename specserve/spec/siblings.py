"""Chain siblings: a single-chain draft plus the second-best token at its most likely positions.

Why: on held-out chat the shipped speculator's first draft is wrong in ~45% of steps, and its second
choice is right in a fifth of those (teacher-forced on held-out phase-2 shards, `benchmarks/
sibling_gain.py`: +0.11 accepted tokens per step for a sibling at position 1, +0.17 for the best two).
A sibling costs one more verified row and no speculator work (the chain's stages already computed the
logits it comes from), while a full second path of the top-k tree costs a stage per token. On the CPU
the packed GEMM verifies 6 to 8 rows in about the time of 6 (the weights are read once either way).

Siblings are leaves, except the one at position 1, which may carry a continuation: the chain that
starts from the first stage's runner-up (the CPU kernel runs it beside the main chain, as a second row
of the same products, so it costs verified rows and next to no speculator time). The tree is the
chain's nodes first (node k-1 is the chain's k-th token), then the siblings, each hung on the chain
node before its position, then the continuation under the position-1 sibling, so ``chain_length``
tells the chain apart and the policy can price both.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from specserve.spec.draft_tree import DraftTree

# Tokens verified after the position-1 sibling, from the chain that starts with it. When the chain's
# first token is wrong and its runner-up right (~a fifth of those steps on held-out chat), each of them
# can be accepted too, at a verified row each.
RUNNER_UP_CONTINUATION = 2


def default_chain_siblings(device: torch.device) -> int:
    """Siblings per chain when ``--chain-siblings`` is not given: one on a CPU, none elsewhere.

    On the 2-core EPYC, one request, 16 held-out chat prompts, a forced 5-token chain (session 10,
    `benchmarks/siblings_ab.py`): 1.88x of plain decoding without siblings, 1.97x with one, 1.90x with
    two, 1.74x with three (2.25 / 2.43 / 2.47 / 2.49 tokens per step). A GPU has not run them: there the
    proposal runs as PyTorch ops, a few more per stage than the chain's own.
    """
    return 1 if torch.device(device).type == "cpu" else 0


class ChainProposal(NamedTuple):
    """Per request (rows) and chain position (columns)."""

    tokens: torch.Tensor  # [b, depth]: each stage's best token, fed to the next stage
    siblings: torch.Tensor  # [b, depth]: each stage's second-best token (-1: none)
    sibling_logp: torch.Tensor  # [b, depth]: log-probability of the chain before it, then it
    # [b, n] or None: the chain that starts from the position-1 sibling (column 0 is that sibling)
    runner_up: torch.Tensor | None = None


def chain_with_siblings(tokens: list[int], siblings: list[int], sibling_logp: list[float], count: int,
                        runner_up: list[int] | None = None) -> DraftTree:
    """The chain, then its ``count`` most likely siblings (by path log-probability) as leaves; when the
    position-1 sibling is among them and ``runner_up`` (its chain, starting with it) is given, the rest
    of that chain hangs under it."""
    tree = DraftTree.chain(tokens)
    ranked = sorted(((logp, k) for k, (sib, logp) in enumerate(zip(siblings, sibling_logp))
                     if sib >= 0 and sib != tokens[k]), reverse=True)
    first_sibling = -1
    for _, k in ranked[:count]:
        if k == 0:
            first_sibling = len(tree.token_ids)
        tree.token_ids.append(siblings[k])
        tree.parents.append(k - 1)
    if first_sibling >= 0 and runner_up and runner_up[0] == siblings[0]:
        parent = first_sibling
        for token in runner_up[1:]:
            tree.token_ids.append(token)
            tree.parents.append(parent)
            parent = len(tree.token_ids) - 1
    return tree


def chain_length(tree: DraftTree) -> int:
    """How many leading nodes form one chain (node j's parent is node j-1)."""
    length = 0
    for node, parent in enumerate(tree.parents):
        if parent != node - 1:
            break
        length += 1
    return length
