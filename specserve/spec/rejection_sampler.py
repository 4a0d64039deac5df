"""Verify draft trees against the base model's distribution, exactly.

Vocabulary used throughout:
- *accepted* tokens: draft tokens the base model agrees with, along one root-to-node path;
- *recovered* token: when every child of the current node is rejected, a token drawn from the
  base distribution with the rejected children removed (the residual);
- *bonus* token: when the path reaches a leaf, one more token sampled from the base model at that
  leaf, for free. Each step emits the accepted tokens plus exactly one recovered or bonus token.

Greedy: accept the child equal to the base argmax. Sampling: the drafts are deterministic (the
speculator's top-k), i.e. each is a point-mass proposal, so at a node with children c1..cm we try them
in order: accept c_i with probability r(c_i), where r is the base distribution p with the previously
rejected children zeroed and renormalised; if all are rejected, draw from the final residual. Any
token y then comes out with probability p(y) (the chance of reaching c_i is 1 - sum_{j<i} p(c_j), and
r(c_i) = p(c_i) / that), so the output distribution is exactly the base model's, as without speculation.
Penalties and min_tokens apply per row with the history along the path to that row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from specserve.sample.logits_processors import apply_penalties_and_scaling, probs_from_logits
from specserve.sample.sampler import SamplingState, TokenLogprobs, _compute_logprobs, sample_from_probs
from specserve.spec.draft_tree import DraftTree


@dataclass(slots=True)
class VerifyInput:
    tree: DraftTree
    state: SamplingState  # of the real token row (history without any draft)
    first_row: int  # row of the real token in the logits; draft node j is at first_row + 1 + j


@dataclass(slots=True)
class VerifyResult:
    token_ids: list[int]  # accepted drafts, then one recovered or bonus token
    accepted_nodes: list[int]  # tree node indices of the accepted drafts, root to leaf
    last_row: int  # logits row that produced the final token (its hidden state feeds the next draft)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)


def _path_to(tree: DraftTree, node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(tree.token_ids[node])
        node = tree.parents[node]
    return path[::-1]


def verify(logits: torch.Tensor, inputs: Sequence[VerifyInput],
           eos_token_ids: Sequence[int]) -> list[VerifyResult]:
    """logits [R, V]: rows of every request's real token and draft nodes, in VerifyInput order."""
    rows: list[int] = []
    row_states: list[SamplingState] = []
    for item in inputs:
        base = item.state
        rows.append(item.first_row)
        row_states.append(base)
        # Only penalties and min_tokens read a row's history; other rows share the real token's state.
        needs_history = base.params.has_penalties or base.params.min_tokens > 0
        for node in range(len(item.tree)):
            rows.append(item.first_row + 1 + node)
            if needs_history:
                history = base.output_token_ids + _path_to(item.tree, node)
                row_states.append(SamplingState(base.params, base.prompt_token_ids, history, base.generator))
            else:
                row_states.append(base)
    if rows == list(range(logits.shape[0])):
        raw = logits  # the runner's rows, already in this order (a gather would only copy them)
    else:
        raw = logits.index_select(0, torch.tensor(rows, device=logits.device))
    scaled = apply_penalties_and_scaling(raw, row_states, eos_token_ids)  # [R, V]
    argmax = scaled.argmax(dim=-1).tolist()
    needs_probs = [i for i, s in enumerate(row_states) if not s.params.greedy]
    probs = None
    if needs_probs:
        probs = torch.zeros_like(scaled)
        idx = torch.tensor(needs_probs, device=scaled.device)
        probs[idx] = probs_from_logits(scaled.index_select(0, idx), [row_states[i] for i in needs_probs])

    results: list[VerifyResult] = []
    local = 0  # index into rows/row_states of this request's real-token row
    emitted_rows: list[int] = []
    emitted_tokens: list[int] = []
    emitted_states: list[SamplingState] = []
    for item in inputs:
        tree, state = item.tree, item.state
        kids = tree.children()
        node, accepted, tokens = -1, [], []
        while True:
            row = local + 1 + node  # node -1 is the real token's row
            children = kids[node + 1]
            if state.params.greedy:
                target = argmax[row]
                nxt = next((c for c in children if tree.token_ids[c] == target), None)
            else:
                assert probs is not None
                target, nxt = _sample_node(probs[row], [tree.token_ids[c] for c in children], children, state)
            emitted_rows.append(row)
            emitted_states.append(row_states[row])
            if nxt is None:
                tokens.append(target)
                break
            tokens.append(tree.token_ids[nxt])
            accepted.append(nxt)
            node = nxt
        emitted_tokens.extend(tokens)
        results.append(VerifyResult(tokens, accepted, item.first_row + 1 + node))
        local += 1 + len(tree)

    # Logprobs of every emitted token under its row's raw distribution.
    if any(s.params.logprobs is not None for s in emitted_states):
        lp = _compute_logprobs(raw.index_select(0, torch.tensor(emitted_rows, device=raw.device)),
                               torch.tensor(emitted_tokens, device=raw.device), emitted_states)
        pos = 0
        for result in results:
            result.logprobs = lp[pos:pos + len(result.token_ids)]
            pos += len(result.token_ids)
    return results


def _sample_node(p: torch.Tensor, child_tokens: list[int], children: list[int],
                 state: SamplingState) -> tuple[int, int | None]:
    """Try the children in order against p [V]; return (token, accepted child or None)."""
    residual = p.clone()
    for token, child in zip(child_tokens, children):
        total = float(residual.sum())
        mass = float(residual[token])
        if mass > 0.0:
            u = float(torch.rand((), generator=state.generator, device=p.device)) if state.generator \
                else float(torch.rand(()))
            if u * total < mass:
                return token, child
        residual[token] = 0.0
    if float(residual.sum()) <= 0.0:  # every token of nonzero mass was a rejected child: cannot happen
        residual = p  # unless p was a point mass on a rejected child; fall back to p itself
    token = int(sample_from_probs((residual / residual.sum()).unsqueeze(0), [state])[0])
    return token, None
