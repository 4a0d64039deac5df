"""The outcome check: drafting that delivers less than plain steps were predicted to is stopped."""

from __future__ import annotations

import random

from policy_sim import draft_step

from specserve.spec.outcome_check import HOLD_STEPS, DraftingOutcomeCheck, batch_bucket
from specserve.spec.policy import Level, SpeculationPolicy


def test_batch_buckets() -> None:
    assert [batch_bucket(n) for n in (1, 2, 8, 9, 16, 17, 32, 33)] == [1, 2, 8, 16, 16, 32, 32, 64]


def test_holds_drafting_that_delivers_less_than_plain_then_retries() -> None:
    check = DraftingOutcomeCheck()
    for _ in range(40):  # plain would emit 8 tokens in 13 ms; drafting emits 12 in 46 ms
        check.expect(8, 8 / 0.013)
        check.observe(8, True, 12, 0.046)
        if check.holds(8):
            break
    assert check.holds(8) and check.num_holds == 1
    assert not check.holds(1) and not check.holds(16)  # other batch sizes keep their own figures
    for _ in range(HOLD_STEPS):
        check.observe(8, False, 8, 0.013)
    assert not check.holds(8)  # a fresh trial after the hold
    assert check.ratio(8) is None
    while not check.holds(8):  # it fails again: the next hold is twice as long
        check.expect(8, 8 / 0.013)
        check.observe(8, True, 12, 0.046)
    for _ in range(HOLD_STEPS):
        check.observe(8, False, 8, 0.013)
    assert check.holds(8) and check.num_holds == 2


def test_drafting_that_pays_is_left_alone_despite_noisy_steps() -> None:
    rng = random.Random(0)
    check = DraftingOutcomeCheck()
    for _ in range(2000):  # 1.7x on average, each step's tokens 1-6 and its time +-30%
        check.expect(1, 1 / 0.018)
        tokens = 1 + sum(rng.random() < 0.55 ** (k + 1) * 1.6 for k in range(5))
        check.observe(1, True, tokens, 0.021 * rng.uniform(0.7, 1.3))
    assert check.num_holds == 0 and check.ratio(1) > 1.3


def test_observations_without_a_matching_choice_are_ignored() -> None:
    check = DraftingOutcomeCheck()
    for _ in range(64):
        check.observe(8, True, 1, 1.0)  # never expected: a forced or foreign step
        check.expect(8, 1000.0)
        check.observe(4, True, 1, 1.0)  # the batch changed since the choice
    assert check.num_holds == 0 and check.ratio(8) is None


def test_auto_stops_drafting_when_steps_cost_more_than_it_can_see() -> None:
    """The cost model sees flat, GPU-like step times, so drafting looks nearly free; the whole step
    really takes 3.5x as long once it drafts (as `auto` at 8 requests on an H200, eagerly). The check
    brings the delivered rate back to at least 0.9x of plain decode."""
    rng = random.Random(0)
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    ids = [f"r{i}" for i in range(8)]
    policy.observe_step(800, 0.05, decode_only=False)
    emitted_total = seconds_total = 0.0
    for _ in range(1500):
        levels = policy.choose(ids)
        tokens, emitted = draft_step(policy, ids, levels, rng, 0.5)
        seen = 0.013 + 0.00001 * tokens
        drafted = any(level.depth for level in levels)
        whole = seen * (3.5 if drafted else 1.0)
        policy.observe_step(tokens, seen)
        policy.observe_outcome(len(ids), drafted, emitted, whole)
        emitted_total += emitted
        seconds_total += whole
    assert policy.outcome.num_holds >= 1
    assert emitted_total / seconds_total >= 0.9 * len(ids) / 0.013
    assert policy.choose(ids)[0] == Level(0, 1)


def test_the_engine_reports_every_decode_step_to_the_check(tiny_bundle, random_mlp_dir) -> None:
    """Wiring: the engine hands the policy each decode step's emitted tokens and whole time, and the
    steps that drafted on the policy's own choice are counted against its plain prediction."""
    from specserve import LLM, SamplingParams

    llm = LLM(bundle=tiny_bundle, speculator=str(random_mlp_dir), speculation="auto", max_num_seqs=1)
    # A prompt of 16+ tokens: its prefill prices the per-token cost, so deeper levels look worth a try.
    prompt = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat by the door. " * 2
    outputs = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))
    check = llm.engine.runner.spec.policy.outcome
    decode_steps = llm.engine.num_steps - 1  # the prompt's prefill step is not a decode step
    assert check.num_steps == decode_steps
    assert check.windows and check.windows[1].steps > 0  # drafting steps the policy chose were weighed
    assert len(outputs[0].outputs[0].token_ids) == 24
