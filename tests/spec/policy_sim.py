"""One simulated engine step for the policy tests: drafts accepted at random, reported to the policy."""

from __future__ import annotations

import random

from specserve.spec.policy import Level, SpeculationPolicy


def draft_step(policy: SpeculationPolicy, ids: list[str], levels: list[Level], rng: random.Random,
               accept: float) -> tuple[int, int]:
    """Each request's drafts are accepted one after another, each with probability ``accept`` once
    those before it were (a chain: a deeper level accepts whatever a shallower one would have, and maybe
    more); the policy hears of every drafting request. Returns (batched tokens, emitted tokens)."""
    tokens = emitted = 0
    for rid, level in zip(ids, levels):
        nodes = level.depth * level.candidates
        accepted = 0
        while accepted < level.depth and rng.random() < accept:
            accepted += 1
        if level.depth:
            policy.observe_request(rid, level, 1 + accepted, nodes)
        tokens += 1 + nodes
        emitted += 1 + accepted
    return tokens, emitted
