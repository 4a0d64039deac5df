"""What `SpeculationPolicy.choose` costs per step, at 1, 8 and 32 requests, on simulated steps.

Acceptance 0.6 per draft position, step time 20 ms + 0.5 ms per batched token; 600 steps, the
first 100 not timed. Run the same file against another checkout's code to compare:

    python benchmarks/choose_cost.py
    (cd OTHER && PYTHONPATH=. python /path/to/benchmarks/choose_cost.py)
"""

from __future__ import annotations

import random
import time

from specserve.spec.policy import SpeculationPolicy

STEPS = 600
UNTIMED = 100


def choose_seconds(batch: int) -> float:
    rng = random.Random(0)
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=5)
    ids = [f"r{i}" for i in range(batch)]
    policy.observe_step(100 * batch, 0.05, decode_only=False)
    total = 0.0
    for step in range(STEPS):
        started = time.perf_counter()
        levels = policy.choose(ids)
        if step >= UNTIMED:
            total += time.perf_counter() - started
        tokens = emitted = 0
        for rid, level in zip(ids, levels):
            nodes = level.depth * level.candidates
            tokens += 1 + nodes
            accepted = 0
            while accepted < level.depth and rng.random() < 0.6:
                accepted += 1
            if level.depth:
                policy.observe_request(rid, level, 1 + accepted, nodes)
            emitted += 1 + accepted
        seconds = 0.02 + 0.0005 * tokens
        policy.observe_step(tokens, seconds)
        if hasattr(policy, "observe_outcome"):  # absent before session 8
            policy.observe_outcome(batch, any(level.depth for level in levels), emitted, seconds)
    return total / (STEPS - UNTIMED)


if __name__ == "__main__":
    for batch in (1, 8, 32):
        print(f"{batch} requests: {1e6 * choose_seconds(batch):.0f} us per choose")
