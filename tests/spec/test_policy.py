"""The adaptive policy speculates when compute is spare and stops when the machine is saturated."""

from __future__ import annotations

import random

import pytest
from policy_sim import draft_step

from specserve.spec.policy import Level, SpeculationPolicy, StepCostModel


def train(policy: SpeculationPolicy, cost, accept_per_depth: float, batch: int, steps: int = 200,
          graph_cost=None) -> None:
    """Feed the policy synthetic step times and acceptance at whatever levels it chooses, after the
    prompts' prefill step (as in the engine, which is where the policy learns the per-token cost).
    Each draft is accepted with probability ``accept_per_depth`` once those before it were (a chain:
    a deeper level accepts whatever a shallower one would have, and maybe more). ``graph_cost``: the
    time of a plain step replayed as a CUDA graph (when the policy's ``graph_max_batch`` allows)."""
    rng = random.Random(0)
    ids = [f"r{i}" for i in range(batch)]
    policy.observe_step(100 * batch, cost(100 * batch), decode_only=False)
    for _ in range(steps):
        levels = policy.choose(ids)
        tokens, _ = draft_step(policy, ids, levels, rng, accept_per_depth)
        graphed = graph_cost is not None and tokens == batch <= policy.graph_max_batch
        policy.observe_step(tokens, graph_cost(tokens) if graphed else cost(tokens), graphed=graphed)


def overhead_bound(n: int) -> float:  # one request's step barely grows with a few more tokens
    return 0.050 + 0.0005 * n


def compute_bound(n: int) -> float:  # many requests: time grows with every token
    return 0.002 + 0.004 * n


def test_speculates_at_low_load() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=3)
    train(policy, overhead_bound, accept_per_depth=0.7, batch=1)
    assert policy.choose(["r0"])[0].depth >= 2


def test_stops_speculating_when_saturated() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=3, explore_every=10**9)
    train(policy, compute_bound, accept_per_depth=0.3, batch=32)
    assert policy.choose([f"r{i}" for i in range(32)])[0] == Level(0, 1)


def test_poor_acceptance_request_drops_out() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1, explore_every=10**9)
    train(policy, overhead_bound, accept_per_depth=0.8, batch=2)
    for _ in range(30):
        policy.observe_request("bad", Level(3, 1), 1, 3)  # never accepts anything
    levels = policy.choose(["r0", "bad"])
    assert levels[0].depth > 0 and levels[1].depth == 0


def test_unlucky_steps_do_not_bench_a_request_whose_drafts_pay() -> None:
    # The shipped speculator on held-out chat, as a chain: no draft accepted in about half the steps,
    # all three in a sixth (bfloat16 eval histogram 1073 / 466 / 169 / 330). One request at a time,
    # each for 64 steps: the policy must keep speculating nearly always, first step included.

    rng = random.Random(0)
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1)
    policy.observe_step(100, overhead_bound(100), decode_only=False)
    speculated = total = 0
    for request in range(20):
        rid = f"req{request}"
        for _ in range(64):
            level = policy.choose([rid])[0]
            total += 1
            if level.depth:
                speculated += 1
                accepted = rng.choices([0, 1, 2, 3], weights=[1073, 466, 169, 330])[0]
                policy.observe_request(rid, level, 1 + min(accepted, level.depth), level.depth)
            policy.observe_step(1 + level.depth, overhead_bound(1 + level.depth))
        policy.release(rid)
    assert speculated / total > 0.9


@pytest.mark.parametrize("mode, depth", [("on", 3), ("off", 0)])
def test_forced_modes(mode: str, depth: int) -> None:
    policy = SpeculationPolicy(mode, max_depth=3, max_candidates=2)
    assert all(level.depth == depth for level in policy.choose(["a", "b"]))


def test_the_first_decode_step_is_not_timed() -> None:
    """It carries the engine's one-time costs (78 ms against 18 ms on the CPU)."""
    model = StepCostModel()
    model.observe(1, 0.078)
    assert model.predict(1) is None
    model.observe(1, 0.018)
    model.observe(1, 0.018)
    assert model.predict(1) == pytest.approx(0.018)


def test_prefill_steps_set_the_marginal_cost_not_the_buckets() -> None:
    model = StepCostModel()
    model.observe(1, 0.5)  # the first decode step, not timed
    model.observe(1, 0.02)
    model.observe(1000, 1.0, decode_only=False)  # a prefill chunk: 1 ms per token
    assert model.buckets == {1: 0.02}  # interpolating 1..1000 from it would make 64 tokens look cheap
    assert model.predict(65) == pytest.approx(0.02 + 64 * 0.001)


def test_starts_without_speculation_until_a_plain_step_is_timed() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=3)
    assert policy.choose([f"r{i}" for i in range(32)])[0] == Level(0, 1)


def test_cost_model_interpolates_and_extrapolates_pessimistically() -> None:
    model = StepCostModel()
    assert model.predict(10) is None
    model.observe(1, 0.5)  # the first decode step, not timed
    model.observe(1, 0.05)
    model.observe(32, 0.2)
    assert 0.05 <= model.predict(8) <= 0.2
    assert model.predict(128) >= 0.2 * 128 / 32 * 0.9


def test_proposal_cost_is_charged_to_speculating_levels() -> None:
    """A speculator that costs more than its accepted tokens save is not used, however cheap verifying is."""
    policy = SpeculationPolicy("auto", max_depth=1, max_candidates=1, explore_every=10**9)
    policy.observe_step(100, 0.1, decode_only=False)
    policy.observe_step(1, 0.020)
    policy.observe_step(2, 0.021)
    policy.observe_request("r0", Level(1, 1), 2, 1)  # every draft accepted: 2 tokens a step
    assert policy.choose(["r0"])[0] == Level(1, 1)  # 2 / 21 ms beats 1 / 20 ms
    policy.observe_proposal(Level(1, 1), 1, 0.030)  # ... until proposing costs 30 ms
    assert policy.choose(["r0"])[0] == Level(0, 1)  # 2 / 51 ms loses to 1 / 20 ms


def test_saturated_machine_rarely_pays_for_drafts() -> None:
    """With exploration on (the default), a compute-bound batch whose drafts are rarely accepted spends
    almost every step without drafts: once one level has shown poor acceptance, deeper untried levels
    are not assumed perfect, and exploring a level predicted far behind is skipped."""
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=3)
    ids = [f"r{i}" for i in range(32)]
    train(policy, compute_bound, accept_per_depth=0.3, batch=32, steps=400)
    drafted = 0
    for step in range(200):
        levels = policy.choose(ids)
        drafted += levels[0].depth > 0
        tokens = sum(1 + level.depth * level.candidates for level in levels)
        for rid, level in zip(ids, levels):
            if level.depth:  # half the steps accept one draft: requests keep speculating, at a loss
                policy.observe_request(rid, level, 1 + step % 2, level.depth * level.candidates)
        policy.observe_step(tokens, compute_bound(tokens))
    # out of 200 steps: one exploration in 32 reaches the one-token level once a lucky step (every other
    # step here accepts everything) has put it within EXPLORE_WITHIN of plain steps
    assert drafted <= 4


def test_a_fresh_busy_batch_never_runs_a_step_dearer_than_three_plain_ones() -> None:
    """A fresh engine meets 32 requests at once. Prefill's per-token rate is cheaper than a verified
    row's (large GEMMs run closer to peak), so extrapolated from it, deep levels look cheap: the engine
    drafted 7 tokens for all 32 requests (256 rows, ~8 plain steps of time) in its first decode steps,
    and re-timed a 224-row level at its first exploration. Sizes must grow at most threefold, each
    timed before the next is priced (one-token drafts for every request stay in reach), and no step may
    cost more than three plain ones."""
    policy = SpeculationPolicy("auto", max_depth=7, max_candidates=1)
    rng = random.Random(0)
    ids = [f"r{i}" for i in range(32)]
    policy.observe_step(2048, 2048 * 0.001, decode_only=False)  # prefill: 1 ms a token, decode rows 4
    steps = []
    for _ in range(300):
        largest = policy.cost.largest_timed()
        levels = policy.choose(ids)
        tokens, _ = draft_step(policy, ids, levels, rng, 0.6)
        if largest:
            assert tokens <= max(3 * largest, largest + 16)
        policy.observe_step(tokens, compute_bound(tokens))
        steps.append(tokens)
    assert max(compute_bound(tokens) for tokens in steps) <= 3 * compute_bound(len(ids)) + 1e-9
    assert sum(tokens > len(ids) for tokens in steps) <= 12  # ~one exploration step in 16 at most


def test_untried_levels_inherit_the_measured_acceptance() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1)
    assert policy.expected(Level(3, 1), None)[0] == 4.0  # nothing measured: every draft accepted
    for _ in range(20):
        policy.observe_request("r0", Level(1, 1), 1, 1)  # the one-token drafts are never accepted
    # A chain of three drafts is expected to accept what the first position shows, and no more.
    first = policy.expected(Level(1, 1), "r1")[0] - 1.0
    assert first < 0.3
    assert policy.expected(Level(3, 1), "r1")[0] == pytest.approx(1.0 + first + first**2 + first**3)


def test_chain_steps_inform_every_depth() -> None:
    """A depth-5 step with two drafts accepted tells what depths 1-3 would have emitted (all of them,
    at once): the figures of levels not run lately must not go stale while another level runs."""
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    for _ in range(200):
        policy.observe_request("r0", Level(5, 1), 3, 5)  # first two drafts accepted, the third never
    assert policy.expected(Level(2, 1), None)[0] == pytest.approx(3.0, abs=0.05)
    assert policy.expected(Level(5, 1), None)[0] == pytest.approx(3.0, abs=0.05)
    assert policy.expected(Level(1, 1), None)[0] == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("spell_start", [0, 1, 3, 40])
def test_a_slow_spell_does_not_price_speculation_out(spell_start: int) -> None:
    """A shared machine has slow spells. Ten steps 6x slower (from the first step, the first draft
    step, a few steps in, or long after) must not leave speculation priced out once the machine is
    fast again. With absolute per-size EMAs, a draft size timed in the spell kept its slow time, was
    never chosen again, so never re-timed: 0 of 200 steps speculated although drafts paid ~3x."""
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1)
    policy.observe_step(100, overhead_bound(100), decode_only=False)
    speculated = []
    for step in range(spell_start + 40 + 200):
        level = policy.choose(["r0"])[0]
        tokens = 1 + level.depth
        if level.depth:
            policy.observe_request("r0", level, 1 + level.depth, level.depth)  # every draft accepted
        slow = spell_start <= step < spell_start + 10
        policy.observe_step(tokens, overhead_bound(tokens) * (6 if slow else 1))
        speculated.append(level.depth > 0)
    assert sum(speculated[-200:]) >= 190


def test_a_chain_that_drafts_fewer_tokens_than_asked_is_priced_at_its_length() -> None:
    """Asked for 8 drafts, a 5-stage speculator makes 5 (prompt lookup, which makes 8, only where the
    text repeats): the level is worth what 5 drafts are worth, and costs 5 draft rows."""
    policy = SpeculationPolicy("auto", max_depth=8, max_candidates=1)
    rng = random.Random(0)
    for _ in range(400):
        accepted = 0
        while accepted < 5 and rng.random() < 0.6:
            accepted += 1
        policy.observe_request("r0", Level(8, 1), 1 + accepted, 5)
    emitted, nodes = policy.expected(Level(8, 1), None)
    assert nodes == pytest.approx(5.0, abs=0.1)
    assert emitted == pytest.approx(policy.expected(Level(5, 1), None)[0], abs=0.01)
    assert emitted == pytest.approx(1 + sum(0.6**k for k in range(1, 6)), abs=0.25)


def test_trees_are_priced_by_their_own_measurements() -> None:
    """A tree's gain is what its steps showed, not what a chain of its depth would give."""
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=2)
    tree = Level(3, 2)
    for _ in range(200):
        policy.observe_request("r0", Level(3, 1), 1, 3)  # chains accept nothing
        policy.observe_request("r0", tree, 3, 6)  # the two-candidate tree accepts two drafts a step
    ids = ["r0", "r1"]
    policy.observe_step(2, 0.02)
    policy.observe_step(8, 0.021)
    policy.observe_step(14, 0.022)
    assert policy.expected(tree, "r0")[0] == pytest.approx(3.0, abs=0.05)
    assert policy.choose(ids) == [tree, tree]


def gpu_eager(n: int) -> float:  # an eager step on a GPU: launch overhead, flat in tokens (H200: ~12 ms)
    return 0.012 + 0.00005 * n


def gpu_graphed(n: int) -> float:  # the same plain step replayed as a CUDA graph (H200: ~2.5 ms)
    return 0.0025 + 0.00005 * n


def test_replayed_plain_steps_are_timed_apart_from_eager_drafting_steps() -> None:
    """With CUDA graphs, plain steps cost a fifth of an eager verification step: two tokens per step do
    not pay for that, so `auto` tries drafting, times it, and stays plain. Keyed by tokens alone, the
    timings would mix (a 6-request plain step and a one-request 5-draft step share a size)."""
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    policy.graph_max_batch = 8
    train(policy, gpu_eager, accept_per_depth=0.6, batch=1, graph_cost=gpu_graphed)
    assert policy.cost.buckets and policy.cost.graph_buckets  # drafting was tried and timed, eagerly
    assert policy.choose(["r0"])[0] == Level(0, 1)
    drafting = sum(policy.choose(["r0"])[0].depth > 0 for _ in range(64))
    assert drafting <= 64 // 16 + 1  # exploration at most


def test_drafting_that_beats_replayed_steps_is_kept() -> None:
    """Graphs do not switch speculation off where it still pays: nearly every draft accepted, and the
    eager step only a little dearer than the replayed one."""
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    policy.graph_max_batch = 8
    train(policy, gpu_eager, accept_per_depth=0.95, batch=1, graph_cost=lambda n: 0.009 + 0.00005 * n)
    assert policy.choose(["r0"])[0].depth >= 3


def test_without_graphs_every_step_is_timed_as_eager() -> None:
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1)
    train(policy, overhead_bound, accept_per_depth=0.7, batch=1, graph_cost=gpu_graphed)
    assert not policy.cost.graph_buckets and policy.cost.buckets  # graph_max_batch 0: nothing replays


def test_batches_that_come_and_go_keep_graphed_and_eager_timings_apart() -> None:
    """Six requests decoding plainly (a replayed 6-token step) alternate with one request alone, whose
    5-draft chain is also a 6-token step, run eagerly. The lone request must still run at least at
    the speed of replayed plain steps (drafting, 2 tokens per eager step, does not pay)."""
    rng = random.Random(1)
    policy = SpeculationPolicy("auto", max_depth=5, max_candidates=1)
    policy.graph_max_batch = 8
    policy.observe_step(600, gpu_eager(600), decode_only=False)
    alone_seconds = alone_tokens = 0.0
    for round_ in range(12):
        for batch in (6, 1):
            ids = [f"r{round_}-{batch}-{i}" for i in range(batch)]
            for _ in range(30):
                levels = policy.choose(ids)
                tokens, emitted = draft_step(policy, ids, levels, rng, 0.6)
                graphed = tokens == batch <= policy.graph_max_batch
                seconds = gpu_graphed(tokens) if graphed else gpu_eager(tokens)
                policy.observe_step(tokens, seconds, graphed=graphed)
                if batch == 1 and round_ >= 2:
                    alone_seconds += seconds
                    alone_tokens += emitted
            for rid in ids:
                policy.release(rid)
    assert alone_tokens / alone_seconds >= 0.9 / gpu_graphed(1)


@pytest.mark.parametrize("graphs", [False, True])
def test_plain_streak_decides_as_pricing_every_step_would(graphs: bool, monkeypatch) -> None:
    """Where plain steps win, the policy keeps its plain decision for the same requests until the next
    exploration step instead of pricing every level each step. It must decide exactly as pricing every
    step does (the streak off: a margin of 0) while batches come and go (32 requests, where plain
    steps win, then one, where drafting does), and price far fewer steps."""
    import specserve.spec.policy as policy_module

    def cost(n: int) -> float:  # one request's drafts nearly free, 32 requests' a loss
        return 0.010 + 0.0015 * n

    def run(margin: float) -> tuple[list[Level], int]:
        monkeypatch.setattr(policy_module, "PLAIN_STREAK_MARGIN", margin)
        rng = random.Random(2)
        policy = SpeculationPolicy("auto", max_depth=5, max_candidates=3)
        policy.graph_max_batch = 32 if graphs else 0
        policy.observe_step(3200, cost(3200), decode_only=False)
        decisions = []
        for round_, batch in enumerate([32, 1, 32, 1, 32]):
            ids = [f"r{round_}-{i}" for i in range(batch)]
            for _ in range(100):
                levels = policy.choose(ids)
                decisions.append(levels)
                tokens, _ = draft_step(policy, ids, levels, rng, 0.6)
                graphed = tokens == batch <= policy.graph_max_batch
                policy.observe_step(tokens, cost(tokens) * (0.3 if graphed else 1.0), graphed=graphed)
            for rid in ids:
                policy.release(rid)
        return decisions, policy.num_priced_steps

    with_streak, priced = run(policy_module.PLAIN_STREAK_MARGIN)
    every_step, priced_all = run(0.0)
    assert with_streak == every_step
    assert priced_all == 500 and priced <= 500 // 2
    alone = [levels[0].depth for levels in with_streak if len(levels) == 1]
    full = [levels[0].depth for levels in with_streak if len(levels) == 32]
    assert sum(d > 0 for d in alone) > len(alone) // 2 and sum(d > 0 for d in full) < len(full) // 8


@pytest.mark.parametrize("batch", [8, 32, 64, 128])
def test_one_token_chains_with_a_sibling_stay_in_reach_at_any_batch(batch: int) -> None:
    # Grown from plain steps alone, the shallowest chain with its sibling and nothing more (3 rows a
    # request) must be priced at every batch size: otherwise drafting could never start above some size.
    policy = SpeculationPolicy("auto", max_depth=3, max_candidates=1, explore_every=10**9,
                               chain_extra_nodes=lambda depth: 1 + min(2, depth - 1))

    def cheap_rows(n: int) -> float:  # rows almost free: drafting pays at any batch
        return 0.050 + 0.00001 * n

    policy.observe_step(4 * batch, cheap_rows(4 * batch), decode_only=False)
    ids = [f"r{i}" for i in range(batch)]
    for _ in range(3):  # plain steps only (the first is not timed)
        policy.observe_step(batch, cheap_rows(batch))
    assert policy.cost.largest_timed() == batch
    assert policy.choose(ids)[0].depth >= 1
