"""What `SpeculationPolicy.choose` costs per step, at 1, 8 and 32 requests, on simulated steps.

Acceptance 0.6 per draft position; 600 steps, the first 100 not timed. Two machines: step time 20 ms
+ 0.5 ms per batched token (the CPU, where drafting pays), and plain steps replayed as CUDA graphs at
2.5 ms + 0.05 ms per token against eager drafting steps at 12 ms + 0.1 ms per token (the H200, where
plain steps win). Run the same file against another checkout's code to compare:

    python benchmarks/choose_cost.py
    (cd OTHER && PYTHONPATH=. python /path/to/benchmarks/choose_cost.py)
"""

from __future__ import annotations

import random
import time

from specserve.spec.policy import SpeculationPolicy

STEPS = 600
UNTIMED = 100


def cpu_seconds(tokens: int, graphed: bool) -> float:
    return 0.02 + 0.0005 * tokens


def graphs_seconds(tokens: int, graphed: bool) -> float:
    return 0.0025 + 0.00005 * tokens if graphed else 0.012 + 0.0001 * tokens


def choose_seconds(batch: int, step_seconds=cpu_seconds) -> float:
    rng = random.Random(0)
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=5)
    graphs = step_seconds is graphs_seconds
    policy.graph_max_batch = 32 if graphs else 0
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
        graphed = graphs and tokens == batch
        seconds = step_seconds(tokens, graphed)
        policy.observe_step(tokens, seconds, graphed=graphed)
        if hasattr(policy, "observe_outcome"):  # absent before session 8
            policy.observe_outcome(batch, any(level.depth for level in levels), emitted, seconds)
    return total / (STEPS - UNTIMED)


if __name__ == "__main__":
    for name, step_seconds in (("drafting pays (CPU)", cpu_seconds), ("plain steps win (CUDA graphs)", graphs_seconds)):
        for batch in (1, 8, 32):
            print(f"{name}, {batch} requests: {1e6 * choose_seconds(batch, step_seconds):.0f} us per choose")
