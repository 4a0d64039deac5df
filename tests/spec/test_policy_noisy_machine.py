"""The adaptive policy on a simulated shared machine: step times with random noise and slow spells
(1.3-3x, lasting 5-150 steps), as on the 2-core VM the benchmarks run on. Its goodput must stay
near the best fixed level's at one request, and at or above no speculation when the batch is
saturated. On these seeds, of the best fixed level at one request (worst seed in brackets):

- session-5 policy (per-size EMAs of absolute seconds: a level timed in a slow spell was priced out and
  never timed again; a level judged on its first unlucky step): 0.92x (0.88x); saturated 0.988-0.993x
  of no speculation;
- session 6 (machine speed x cost shape, priors): 0.976x (0.947x); saturated 0.998-0.999x;
- session 7 (per-position chain acceptance): 0.989x (0.979x); saturated 0.9995-1.014x. With text
  that gets easier and harder in stretches, 0.979x (0.955x), against 0.84x (0.82x) in session 6;
- session 8 (plain step re-timed after 512 steps without one; the outcome check, which never acts
  here; the first decode step not timed): 0.987x (0.981x); saturated 1.0004-1.033x; varying text
  0.989x (0.975x)."""

from __future__ import annotations

import random

import pytest
from policy_sim import draft_step

from specserve.spec.policy import Level, SpeculationPolicy

STEPS = 2000
ACCEPT = 0.6  # each draft accepted with this probability once those before it were


def one_request_cost(num_tokens: int) -> float:  # a few more rows are nearly free; a 9th row is not
    return 0.020 + 0.0008 * (num_tokens - 1) + (0.008 if num_tokens > 8 else 0.0)


def saturated_cost(num_tokens: int) -> float:  # past 8 rows every token costs compute
    return 0.015 + 0.0006 * num_tokens if num_tokens > 8 else 0.020


def goodput(seed: int, batch: int, cost, fixed_depth: int | None = None, varying_text: bool = False) -> float:
    return simulate(seed, batch, cost, fixed_depth, varying_text)[0]


def simulate(seed: int, batch: int, cost, fixed_depth: int | None = None,
             varying_text: bool = False) -> tuple[float, SpeculationPolicy]:
    """(emitted tokens per simulated second, the policy); ``fixed_depth`` replaces the policy by one level.
    ``varying_text``: the acceptance rate changes in stretches of 20-200 steps (0.3, 0.5 or 0.8), as
    text gets easier or harder to guess, instead of staying at ACCEPT."""
    speeds: list[float] = []
    spells = random.Random(seed)
    while len(speeds) < STEPS:
        speeds += [spells.choice([1.0, 1.0, 1.3, 1.8, 3.0])] * spells.randint(5, 150)
    accept_rates: list[float] = []
    stretches = random.Random(seed + 3000)
    while len(accept_rates) < STEPS:
        rate = stretches.choice([0.3, 0.5, 0.8]) if varying_text else ACCEPT
        accept_rates += [rate] * stretches.randint(20, 200)
    accept, noise = random.Random(seed + 1000), random.Random(seed + 2000)
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    ids = [f"r{i}" for i in range(batch)]
    policy.observe_step(100 * batch, cost(100 * batch), decode_only=False)  # the prompts' prefill
    seconds = emitted = 0.0
    for step in range(STEPS):
        levels = [Level(fixed_depth, 1)] * batch if fixed_depth is not None else policy.choose(ids)
        tokens, step_emitted = draft_step(policy, ids, levels, accept, accept_rates[step])
        step_seconds = cost(tokens) * speeds[step] * noise.lognormvariate(0, 0.1)
        policy.observe_step(tokens, step_seconds)
        policy.observe_outcome(batch, any(level.depth for level in levels), step_emitted, step_seconds)
        seconds += step_seconds
        emitted += step_emitted
    return emitted / seconds, policy


def test_one_request_stays_near_the_best_fixed_level() -> None:
    ratios = []
    for seed in range(4):
        best = max(goodput(seed, 1, one_request_cost, depth) for depth in range(6))
        ratios.append(goodput(seed, 1, one_request_cost) / best)
    assert sum(ratios) / len(ratios) >= 0.95 and min(ratios) >= 0.92, ratios


def test_one_request_follows_text_that_gets_easier_and_harder() -> None:
    """Per-level averages of tokens per step (the session-6 policy) compared a deep level measured on
    hard text with a shallow one measured since on easy text, and stayed shallow: 0.82-0.91x of the
    best fixed depth on these seeds. Per-position acceptance, updated by every chain step, does not."""
    ratios = []
    for seed in range(4):
        best = max(goodput(seed, 1, one_request_cost, depth, varying_text=True) for depth in range(6))
        ratios.append(goodput(seed, 1, one_request_cost, varying_text=True) / best)
    assert sum(ratios) / len(ratios) >= 0.95 and min(ratios) >= 0.92, ratios


@pytest.mark.parametrize("seed", range(3))
def test_saturated_batch_stays_at_no_speculation(seed: int) -> None:
    plain = goodput(seed, 32, saturated_cost, fixed_depth=0)
    assert goodput(seed, 32, saturated_cost) >= 0.995 * plain


@pytest.mark.parametrize("varying_text", [False, True])
def test_the_outcome_check_leaves_paying_drafts_alone_in_slow_spells(varying_text: bool) -> None:
    """Slow spells and noisy steps do not make drafting that pays look worse than plain steps."""
    for seed in range(4):
        _, policy = simulate(seed, 1, one_request_cost, varying_text=varying_text)
        assert policy.outcome.num_holds == 0 and policy.outcome.ratio(1) > 1.2
