"""The tree beside a single chain: the likeliest other paths of a beam over the speculator's stages.

Why: on held-out chat the shipped speculator's first draft is wrong in ~45% of steps, and the best
other continuations are often right. Its stages can score them almost for free: a later stage run on
four rows a request instead of one reads its weights once all the same (``MLPSpeculator.propose_beam``,
one kernel call on the CPU). Walked step by step as decoding walks (offline, greedy, held-out prompts
0-39, ``benchmarks/tree_shapes_sim.py``), a 5-token chain with 4 more nodes from a beam 4 rows wide
accepted 2.42 tokens per step (6 more: 2.48) against 2.25 for what it replaces: the chain with its
likeliest sibling and the position-1 sibling's 2-token continuation (2.5 more nodes on average). A
verified row is cheap up to ~12 a request (the packed GEMM runs 9-12 rows as one tile). One request,
`auto`, the engines taking turns: 1.87-1.92x of `off` with the sibling tree, 1.99-2.04x with the
beam's (``benchmarks/beam_ab.py``, bfloat16: level at 1.74x).

The tree is the chain's nodes first (node k-1 is the chain's k-th token), so ``chain_length`` tells the
chain apart and the policy prices the chain by its positions and the rest by a measured rescue; then
the other candidates by path log-probability, each hung on its parent, the likeliest first, up to
``beam_extra_nodes(depth)`` of them.
"""

from __future__ import annotations

from specserve.spec.draft_tree import DraftTree

# Rows a request from the beam's second stage on, and candidates per row.
BEAM_WIDTH = 4
# The most nodes beside a chain. One request, float32, auto, engines taking turns (benchmarks/beam_ab.py):
# 4 against 6 on held-out prompts 24-55 1.992x against 1.958x of `off`, on 88-135 1.943x against 1.925x
# (with 6, 12 rows at depth 5, the policy drafted shallower); 3 against 6 on prompts 0-23: 2.025x against
# 2.042x. Short chains keep one node a position, as many as the sibling tree had (1, 2, 3 at depths 1-3),
# so they stay as cheap to verify at high load.
MAX_EXTRA_NODES = 4


def beam_extra_nodes(depth: int, most: int = MAX_EXTRA_NODES) -> int:
    """Nodes beside a chain of ``depth`` tokens: one a position, up to ``most``."""
    return max(0, min(depth, most))


def chain_with_beam(tokens: list[list[list[int]]], logp: list[list[list[float]]], source: list[list[int]],
                    extra: int) -> DraftTree:
    """The tree from one request's beam (as ``MLPSpeculator.propose_beam`` returns it, cut to the
    request's depth): tokens[i][j][k] and logp[i][j][k] for stage i, row j, rank k; source[i][j] the
    candidate (row * width + rank) of stage i - 1 that row j continues. The chain (row 0, rank 0 at every
    stage), then up to ``extra`` other candidates, likeliest path first, each under its parent."""
    tree = DraftTree()
    node_of: dict[tuple[int, int, int], int] = {}
    for i, stage in enumerate(tokens):
        if stage[0][0] < 0:
            break
        node_of[(i, 0, 0)] = len(tree.token_ids)
        tree.token_ids.append(stage[0][0])
        tree.parents.append(i - 1)
    if extra <= 0:
        return tree
    width = len(source[0]) if source else 0
    others = sorted((-lp, i, j, k) for i, stage in enumerate(logp) for j, row in enumerate(stage)
                    for k, lp in enumerate(row) if (j or k) and tokens[i][j][k] >= 0)
    added = 0
    for _, i, j, k in others:  # a parent's path is at least as likely as its child's, and shallower
        if i == 0:
            parent = -1
        else:
            src = source[i][j]
            parent = node_of.get((i - 1, src // width, src % width), -2) if src >= 0 else -2
            if parent == -2:
                continue
        node_of[(i, j, k)] = len(tree.token_ids)
        tree.token_ids.append(tokens[i][j][k])
        tree.parents.append(parent)
        added += 1
        if added == extra:
            break
    return tree
