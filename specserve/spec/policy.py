"""Adaptive speculation: how many draft tokens and candidates each request gets next step.

The choice maximises expected goodput, emitted tokens per second of step time:

    sum_i E[emitted_i(level_i)] / T(num_batched_tokens)

- ``T(n)`` is learned from the step times the engine observes for decode steps: a machine-speed factor
  that follows every step, times a cost shape per bucket of batch token counts that only steps timed
  right after a step of another size change (``StepCostModel``: on a shared machine, sizes timed at
  different moments must not be compared in absolute seconds). Beyond the largest bucket seen it
  grows by the per-token cost of the prefill steps observed (a compute-bound rate), or, before any
  prefill, proportionally to n: an unmeasured larger batch is never assumed free. Prefill steps never
  enter the buckets themselves: a 1000-token prefill would make interpolated mid-size decode steps
  look far cheaper than they are.
- A level whose step is more than three times the largest decode step timed so far (GROW_AT_MOST) is
  not chosen: extrapolated that far, its price is a guess, and at 32 requests the guess made a fresh
  engine's first decode steps 256 rows deep. Sizes grow step by step, each timed before the next.
- Proposing drafts costs time too (the speculator's forward, per request): measured apart from the
  base step (an EMA of seconds per proposing request at each level) and added to ``T`` for that level.
- ``E[emitted]`` for a level is measured (``spec/acceptance.py``). For a chain of depth d it is
  1 + sum_k prod_{j<=k} p_j, from per-position acceptance rates p_k that every chain step updates
  whichever depth ran, so levels are never compared on figures taken at different times (on easier
  or harder text). Trees use an EMA of tokens emitted per step at their level. Every estimate is
  weighed by the steps it rests on against a prior (each request's against every request's, every
  request's against "every draft accepted" at first), so a level is tried while speculation looks
  promising, skipped once it plainly does not pay, and not written off after one unlucky step.
- What drafting steps actually deliver is checked against the plain-step prediction, per batch size
  (``spec/outcome_check.py``): where the predictions miss a cost and drafting delivers less than plain
  steps would, drafting at that batch size stops for a while.
- A little exploration (one step in ``explore_every``) keeps estimates fresh, but only towards a
  neighbouring level predicted within EXPLORE_WITHIN of the best (on a saturated machine exploring a
  level already known to lose would cost throughput for nothing), or one whose size has not been timed
  for RETIME_AFTER steps, or a draft size timed only once, when at half its step time it would win: a
  timing taken in a slow spell must not price a level out for good because it is never taken again.
  Re-timing runs only steps that cost at most RETIME_MAX_COST plain ones.

With CUDA graphs (``graph_max_batch`` > 0), plain decode steps are replayed as graphs and cost a
fraction of an eager step with the same tokens (at one request on an H200: 2.5 ms against ~12 ms),
while verification steps run eagerly. The cost model times the two kinds apart.

Because both terms are measurements, a saturated machine (T grows linearly in n) makes extra draft
tokens unprofitable and the policy falls back to no speculation smoothly, with no batch-size threshold.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

from specserve.spec.acceptance import AcceptanceStats, ChainAcceptance, ema, expected_emitted
from specserve.spec.outcome_check import DraftingOutcomeCheck


@dataclass(frozen=True)
class Level:
    depth: int
    candidates: int

    @property
    def label(self) -> str:
        return f"d{self.depth}c{self.candidates}"


MIN_RATE = 0.05  # accepted drafts per draft token below which a request stops speculating
# A request's rate is a slow EMA that starts from the rate of all requests so far: a chain accepts
# nothing in about half of its steps even when it pays (held-out chat, the shipped speculator), so a
# fast EMA, or one that starts from the request's first step, benched good requests after one or two
# unlucky steps (at one request the engine then speculated in a quarter of its steps instead of all).
REQUEST_RATE_DECAY = 0.9
# A request's own acceptance at a level weighs count / (count + this) against every request's.
REQUEST_PRIOR_STEPS = 16
# Every request's acceptance at a level weighs count / (count + this) against the prior from all levels:
# a chain accepts nothing in ~40% of its steps, so a level judged on its first step or two could be
# priced out by bad luck, never chosen again, and so never corrected.
LEVEL_PRIOR_STEPS = 8
# A speculative level must promise this much more goodput than no speculation. The cost model rests on
# noisy step times (and extrapolates unseen sizes), so a predicted gain of a few percent is
# within its error: at 32 requests on the 2-core EPYC, levels predicted ~5% ahead measured 20% behind.
MIN_GAIN = 1.10
# Exploration only visits a neighbouring level whose predicted goodput is at least this share of the
# chosen level's (at 32 requests, a one-token draft step measured ~0.7x of a plain one's goodput) ...
EXPLORE_WITHIN = 0.85
# ... or whose step size was last timed this many decode steps ago: a size timed at the start of a slow
# spell stays too dear in the cost shape until it is timed again (one step in this many, at most).
RETIME_AFTER = 128
# Re-timing (that, or a size timed only once) only for a level that a slow spell could have priced out:
# at half its step time (the machine runs 1.3-3x slower in its spells) it would win. On a saturated
# batch the deep levels, predicted far behind, are then not re-timed at all (each such step is a loss).
RETIME_WITHIN = 0.5
# Re-timing only for a level whose step would cost at most this many plain steps: re-timing a deep level
# of a 32-request batch (224 rows, ~6 plain steps of time for ~1.5x the tokens) cost a fresh engine
# several percent of its throughput; at one request every level is within it (9 rows ~1.3 plain steps).
RETIME_MAX_COST = 2.0
# A drafting level is chosen only if its step is at most this much larger than the largest decode step
# ever timed (or GROW_BY_TOKENS more): beyond it the cost is extrapolated from prefill's per-token rate,
# which at 32 requests priced a 256-row verification step at a fraction of its cost (a fresh engine
# drafted 7 tokens for all 32 requests in its first decode steps). Sizes are then reached step by step,
# each timed before the next is priced. Three, so that from plain steps of any batch the shallowest
# chain is in reach with its sibling (3 rows a request): with less, a batch size would exist above
# which drafting could never be tried, a batch-size threshold in disguise.
GROW_AT_MOST = 3.0
GROW_BY_TOKENS = 16
# The plain step is timed again after this many decode steps without one: every level is judged against
# it, so it must not go stale, but each such step gives up a drafting step's gain (at 128 the simulated
# one-request goodput fell from 0.989x to 0.975x of the best fixed depth).
PLAIN_RETIME_AFTER = 512
# While plain steps win by a margin, the decision is kept for the same requests until the next
# exploration step instead of being priced again: without drafts no acceptance figure moves, and step
# times move every level's price by the same machine-speed factor. Pricing costs ~0.1-0.3 ms per step
# (8-32 requests), a tenth of a CUDA-graph decode step. The margin covers a plain size being re-timed.
PLAIN_STREAK_MARGIN = 0.9


@dataclass
class BucketTiming:
    """What the cost model knows of one (kind of step, bucket of batched tokens)."""

    shape: float  # seconds at speed 1 (EMA over the steps that switched into this bucket)
    timings: int  # how many such steps set it
    set_at: int  # the cost model's decode-step count when it was last set


class StepCostModel:
    """Step seconds as a function of batched tokens: a machine-speed factor times a cost shape.

    On a shared machine the same step can take twice as long in a slow spell. EMAs of absolute seconds
    per size, each last updated at a different time, compare a draft size timed in a slow spell with a
    plain size timed since: speculation then looks dear, is no longer chosen, and its size is never
    timed again (at one request `auto` ran at 1.4x instead of 1.8x). So the model keeps apart:

    - ``speed``: how slow the machine is now, a fast EMA (SPEED_DECAY) of each decode step's seconds
      over the shape's figure for its size. Every size's prediction moves with it at once.
    - ``shape``: seconds per size at speed 1, per bucket of batched tokens. A step of the same bucket
      as the step before tells only the speed (so a slow spell leaves the relative costs as they
      were). A step of another bucket, or a first one, is read against the speed of the steps just
      before it: it tells this size's cost relative to theirs (an EMA, SWITCH_DECAY), then the speed.
      Updating both from same-bucket steps would let their split drift at random with the noise (the
      product is all a bucket's steps show), and the other buckets' predictions with it.

    The policy compares levels within one step, so what decides is the shape; the speed matters
    against the costs measured apart (the speculator's proposals).

    With CUDA graphs, a plain decode step replayed as a graph costs a fraction of an eager step with
    the same tokens. Each bucket is therefore kept per kind of step, (graphed, bucket), under one
    speed: keyed by tokens alone, a 6-request replayed step and a one-request 5-draft eager step would
    share one figure.
    """

    SPEED_DECAY = 0.5
    SWITCH_DECAY = 0.6
    PREFILL_DECAY = 0.6  # per prefill step, for the per-token rate that extrapolates past the buckets

    def __init__(self) -> None:
        # graphed -> bucket lower edge -> its timing, decode steps only
        self.records: dict[bool, dict[int, BucketTiming]] = {False: {}, True: {}}
        self.speed = 1.0
        self.last_key: tuple[bool, int] | None = None  # the key of the latest decode step
        self.num_steps = 0  # decode steps observed
        self.prefill_token_shape: float | None = None  # seconds per prefill token at speed 1 (>= 16 tokens)
        self.warmed_up = False  # the first decode step is not timed (see observe)
        self.largest_decode_tokens = 0  # the largest decode step timed (not its bucket: see GROW_AT_MOST)

    @staticmethod
    def bucket(num_tokens: int) -> int:
        """Exact up to 16 tokens (one request's drafts: 8 and 9 rows differ by a GEMM row group),
        then geometric (x1.25)."""
        if num_tokens <= 16:
            return max(num_tokens, 1)
        return int(1.25 ** math.floor(math.log(num_tokens, 1.25)))

    @property
    def buckets(self) -> dict[int, float]:
        """Predicted seconds per bucket of eager steps at the current speed."""
        return {key: self.speed * record.shape for key, record in self.records[False].items()}

    @property
    def graph_buckets(self) -> dict[int, float]:
        """Predicted seconds per bucket of steps replayed as CUDA graphs at the current speed."""
        return {key: self.speed * record.shape for key, record in self.records[True].items()}

    def observe(self, num_tokens: int, seconds: float, decode_only: bool = True, graphed: bool = False) -> None:
        if not decode_only:
            if num_tokens >= 16:
                per_token = seconds / num_tokens / self.speed
                self.prefill_token_shape = ema(self.prefill_token_shape, per_token, self.PREFILL_DECAY)
            return
        if not self.warmed_up:
            # An engine's first decode step carries one-time costs (first writes to fresh KV pages,
            # buffers built on first use): 78 ms against 18 ms for the next one on the CPU. As the first
            # shape it skewed the speed, and with it every size timed after, for hundreds of steps.
            self.warmed_up = True
            return
        key = (graphed, self.bucket(num_tokens))
        self.num_steps += 1
        self.largest_decode_tokens = max(self.largest_decode_tokens, num_tokens)
        record = self.records[graphed].get(key[1])
        if record is None:
            record = self.records[graphed][key[1]] = BucketTiming(seconds / self.speed, 1, self.num_steps)
        elif key != self.last_key:
            record.shape = ema(record.shape, seconds / self.speed, self.SWITCH_DECAY)
            record.timings += 1
            record.set_at = self.num_steps
        self.speed = ema(self.speed, seconds / record.shape, self.SPEED_DECAY)
        self.last_key = key

    def largest_timed(self) -> int:
        """The most batched tokens of a decode step timed so far, of either kind (0 before any)."""
        return self.largest_decode_tokens

    def num_timings(self, num_tokens: int, graphed: bool = False) -> int:
        """How many times this size's bucket was timed right after another (what sets its shape)."""
        record = self.records[graphed].get(self.bucket(num_tokens))
        return 0 if record is None else record.timings

    def age(self, num_tokens: int, graphed: bool = False) -> int:
        """Decode steps since this size's shape was last set (0 if it never was: it is interpolated)."""
        record = self.records[graphed].get(self.bucket(num_tokens))
        return 0 if record is None else self.num_steps - record.set_at

    def predict(self, num_tokens: int, graphed: bool = False) -> float | None:
        """``graphed``: a step replayed as a CUDA graph. Of a kind never timed, the other kind stands in:
        eager steps are timed only once something drafts, and until then are priced as replayed ones
        (optimistic, so that speculation is tried once and timed)."""
        records = self.records[graphed] or self.records[not graphed]
        shape = self._predict_shape(records, num_tokens)
        return None if shape is None else self.speed * shape

    def _predict_shape(self, records: dict[int, BucketTiming], num_tokens: int) -> float | None:
        if not records:
            return None
        keys = sorted(records)
        n = max(num_tokens, 1)
        pos = bisect.bisect_left(keys, n)
        if pos < len(keys) and keys[pos] == n:
            return records[n].shape
        if pos == 0:
            return records[keys[0]].shape  # fewer tokens than ever seen: at most as costly
        if pos == len(keys):  # beyond what was seen
            last = keys[-1]
            per_token = records[last].shape / last
            if self.prefill_token_shape is not None:
                per_token = self.prefill_token_shape
            return records[last].shape + (n - last) * per_token
        lo, hi = keys[pos - 1], keys[pos]
        frac = (n - lo) / (hi - lo)
        return records[lo].shape + frac * (records[hi].shape - records[lo].shape)


class SpeculationPolicy:
    def __init__(self, mode: str, max_depth: int, max_candidates: int, explore_every: int = 16,
                 chain_extra_nodes: Callable[[int], int] | None = None) -> None:
        """``chain_extra_nodes(depth)``: the nodes a single chain of that depth carries besides its own
        (``spec/chain_beam.py``, ``spec/siblings.py``), priced until levels have measured node counts."""
        self.chain_extra_nodes = chain_extra_nodes or (lambda depth: 0)
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"speculation must be auto, on or off, got {mode!r}")
        self.mode = mode
        self.max_depth = max_depth
        self.max_candidates = max_candidates
        self.explore_every = explore_every
        self.levels = [Level(0, 1)] + [Level(d, 1) for d in range(1, max_depth + 1)]
        self.levels += [Level(max_depth, c) for c in range(2, max_candidates + 1)]
        self.cost = StepCostModel()
        self.graph_max_batch = 0  # the most requests a graph replays; 0 = no graphs
        self.proposal_seconds: dict[Level, float] = {}  # EMA of proposal seconds per proposing request
        self.global_stats = AcceptanceStats()
        self.request_stats: dict[str, AcceptanceStats] = {}
        self.global_chain = ChainAcceptance(decay=0.95)  # every request's chain steps, per position
        self.request_chain: dict[str, ChainAcceptance] = {}
        # EMA over chain steps that carried nodes beside the chain (spec/chain_beam.py) of the tokens they
        # added to what the chain alone gave (a path that leaves the chain where it failed); 0 until measured.
        self.sibling_rescue = 0.0
        # Per request: EMA of accepted drafts per draft token, whatever the level. Requests below
        # MIN_RATE sit out (no drafts) until their estimate is reset for a retry.
        self.request_rate: dict[str, float] = {}
        # EMA of accepted drafts per draft token, all requests. It starts from every draft accepted, not
        # from the first step: one unlucky first step (a chain accepts nothing in ~40% of them) would
        # make speculation look useless.
        self.global_rate = 1.0
        self._step = 0
        self._plain_streak: tuple[tuple[str, ...], int] | None = None  # (requests, other tokens) kept plain
        self.num_priced_steps = 0  # choose calls that priced every level (the others kept a plain streak)
        self.last_level: Level = self.levels[-1]
        self.outcome = DraftingOutcomeCheck()  # what drafting delivered against the plain prediction

    # ---- observations ------------------------------------------------------------------------
    def observe_step(self, num_tokens: int, seconds: float, decode_only: bool = True,
                     graphed: bool = False) -> None:
        """``decode_only``: every request fed one real token (plus drafts), no prompt chunk;
        ``graphed``: the step was replayed as a CUDA graph."""
        self.cost.observe(num_tokens, seconds, decode_only, graphed)

    def observe_proposal(self, level: Level, num_requests: int, seconds: float) -> None:
        self.proposal_seconds[level] = ema(self.proposal_seconds.get(level), seconds / max(num_requests, 1), 0.8)

    def observe_request(self, request_id: str, level: Level, emitted: int, num_nodes: int,
                        chain_drafts: int | None = None, chain_accepted: int | None = None) -> None:
        """One request's verified step: ``emitted`` tokens from ``num_nodes`` draft nodes. For a chain
        that carried other nodes (``spec/chain_beam.py``): ``chain_drafts``, the chain's own length, and
        ``chain_accepted``, how many of the chain's own nodes the accepted path holds."""
        self.global_stats.observe(level, emitted, num_nodes)
        self.request_stats.setdefault(request_id, AcceptanceStats(decay=0.8)).observe(level, emitted, num_nodes)
        if level.candidates == 1 and num_nodes:
            drafts = num_nodes if chain_drafts is None else chain_drafts
            # the chain's positions learn only from the chain; the rest is the other nodes' rescue
            accepted = emitted - 1 if chain_accepted is None else chain_accepted
            self.global_chain.observe(drafts, accepted)
            self.request_chain.setdefault(request_id, ChainAcceptance(decay=0.8)).observe(drafts, accepted)
            if num_nodes > drafts:
                self.sibling_rescue = ema(self.sibling_rescue, float(max(0, emitted - 1 - accepted)), 0.95)
        if num_nodes:
            rate = (emitted - 1) / num_nodes
            self.global_rate = ema(self.global_rate, rate, 0.95)
            start = self.request_rate.get(request_id, self.global_rate)
            self.request_rate[request_id] = ema(start, rate, REQUEST_RATE_DECAY)

    def observe_outcome(self, num_requests: int, drafted: bool, emitted: int, seconds: float) -> None:
        """One whole engine step of ``num_requests`` decoding requests (proposals included)."""
        self.outcome.observe(num_requests, drafted, emitted, seconds)

    def release(self, request_id: str) -> None:
        self.request_stats.pop(request_id, None)
        self.request_chain.pop(request_id, None)
        self.request_rate.pop(request_id, None)

    # ---- decisions ---------------------------------------------------------------------------
    def expected(self, level: Level, request_id: str | None) -> tuple[float, float]:
        """(expected emitted tokens, expected draft nodes) at a level for one request."""
        global_rates = self.global_chain_rates()
        chain = self.chain_emitted(request_id, global_rates) if level.candidates == 1 else None
        return self._expected(level, request_id, chain,
                              self._expected_any_request(level, expected_emitted(global_rates)))

    def global_chain_rates(self) -> list[float]:
        """Every request's acceptance rate at chain positions 1 .. max_depth."""
        # Before many chain steps, the first position leans on "every draft accepted": a prior that
        # followed the first few steps instead (accepted drafts per unit of depth, as trees use) left the
        # policy at no speculation after an unlucky start (simulated varying text: 0.96x of the best
        # fixed depth against 0.98x).
        return self.global_chain.blended(self.max_depth, LEVEL_PRIOR_STEPS, 1.0)

    def chain_emitted(self, request_id: str | None, global_rates: list[float]) -> list[float]:
        """Expected tokens per step of a chain of each depth 0 .. max_depth for one request (every
        request's figures, ``global_rates``, when it has none of its own yet)."""
        rates = global_rates
        own = self.request_chain.get(request_id) if request_id else None
        if own is not None:
            # A request's own figures count in proportion to how many steps they rest on: a few
            # unlucky steps must not stop a request whose drafts pay on average.
            rates = own.blended(self.max_depth, REQUEST_PRIOR_STEPS, prior=rates)
        return expected_emitted(rates)

    def _expected(self, level: Level, request_id: str | None, chain: list[float] | None,
                  any_request: tuple[float, float]) -> tuple[float, float]:
        """``chain``: the request's ``chain_emitted`` (used for single-chain levels); ``any_request``:
        ``_expected_any_request(level, ...)``, computed once per step for all requests."""
        if level.depth == 0:
            return 1.0, 0.0
        emitted, nodes = any_request
        stats = self.request_stats.get(request_id) if request_id else None
        if stats is not None and level in stats.emitted:
            weight = stats.count[level] / (stats.count[level] + REQUEST_PRIOR_STEPS)
            nodes = weight * stats.nodes[level] + (1 - weight) * nodes
            if chain is None:  # a chain's emitted tokens come from its positions, below
                emitted = weight * stats.emitted[level] + (1 - weight) * emitted
        if chain is not None:
            # A proposer may draft fewer tokens than asked (the MLP speculator's stages end before prompt
            # lookup's, which drafts nothing where the text does not repeat): the chain is read at the
            # length it actually drafts on average, between the two depths around it.
            length = min(nodes, float(level.depth))
            lower = int(length)
            upper = min(lower + 1, level.depth)
            emitted = chain[lower] + (length - lower) * (chain[upper] - chain[lower])
            emitted += self.sibling_rescue  # tokens from the nodes beside the chain where it failed
        return emitted, nodes

    def _expected_any_request(self, level: Level, chain: list[float]) -> tuple[float, float]:
        """Every request's averages at a level (emitted: what trees use), against a prior: what a single
        chain of that depth is expected to emit (``chain``: every request's ``chain_emitted``; every
        draft accepted before any chain step). A tree holds that chain as its best path, so only its own
        measurements may raise it. The earlier prior, accepted drafts per unit of depth spread along one
        path, ignored that deep drafts are accepted less often than shallow ones; with it and a few lucky
        tree steps, `auto` at one request on 8 held-out chat prompts took a two-path tree (a PyTorch
        proposal of ~7 ms against ~1.2 ms for the chain kernel) as its best level in 48 of ~450 steps."""
        prior_emitted = chain[min(level.depth, len(chain) - 1)]
        # Priced as a chain alone, a chain with siblings and the position-1 sibling's continuation was
        # 3 rows per request short: at 8 requests a fresh engine took 4-token chains (64 rows, ~3 plain
        # steps of time) for 40-row steps until their node counts were measured.
        prior_nodes = float(level.depth * level.candidates
                            + (self.chain_extra_nodes(level.depth) if level.candidates == 1 else 0))
        glob = self.global_stats
        if level not in glob.emitted:
            return prior_emitted, prior_nodes
        weight = glob.count[level] / (glob.count[level] + LEVEL_PRIOR_STEPS)
        return (weight * glob.emitted[level] + (1 - weight) * prior_emitted,
                weight * glob.nodes[level] + (1 - weight) * prior_nodes)

    def choose(self, request_ids: list[str], num_other_tokens: int = 0) -> list[Level]:
        """One level per request for the next step."""
        if self.mode == "off" or not request_ids:
            return [self.levels[0]] * len(request_ids)
        if self.mode == "on":
            return [self.levels[-1]] * len(request_ids)
        self._step += 1
        if self._step % (4 * self.explore_every) == 0:
            self.request_rate.clear()  # let requests that sat out try again
        if (self._plain_streak == (tuple(request_ids), num_other_tokens)
                and self._step % self.explore_every != 0):
            self.last_level = self.levels[0]
            return [self.levels[0]] * len(request_ids)
        self._plain_streak = None
        self.num_priced_steps += 1
        active = [rid for rid in request_ids if self.request_rate.get(rid, 1.0) >= MIN_RATE]
        num_idle = len(request_ids) - len(active)
        best_level, best_rate, plain_rate = self.levels[0], -1.0, 0.0
        rates: dict[Level, float] = {}
        sizes: dict[Level, int] = {}  # batched tokens of the step at each level
        global_rates = self.global_chain_rates()
        chains: dict[str | None, list[float]] = {None: expected_emitted(global_rates)}
        chains.update((rid, self.chain_emitted(rid, global_rates)) for rid in active if rid in self.request_chain)
        # A step without drafts replays a graph when no prompt chunk shares it and the batch fits one.
        plain_graphed = num_other_tokens == 0 and len(request_ids) <= self.graph_max_batch
        largest = self.cost.largest_timed()
        reachable = max(GROW_AT_MOST * largest, largest + GROW_BY_TOKENS)
        for level in self.levels:
            goodput = self._goodput(level, active, num_other_tokens + num_idle, num_idle, chains,
                                    graphed=plain_graphed and level.depth == 0)
            if goodput is None:  # no decode step timed yet: measure the plain step first, then explore
                best_level, rates = self.levels[0], {}
                break
            rate, sizes[level] = goodput
            if level.depth and sizes[level] > reachable:
                continue  # priced by extrapolation only: time the sizes between first
            rates[level] = rate
            if level.depth == 0:
                plain_rate = rate
            elif rate < plain_rate * MIN_GAIN:
                continue
            if rate > best_rate:
                best_level, best_rate = level, rate
        if self._step % self.explore_every == 0 and rates:
            # A draft size timed only once may have been timed in a slow spell, which would price its
            # levels out for good (and the levels near it, whose cost is interpolated from it): one
            # more timing each, at most once per size in the engine's life.
            plain_seconds = self.cost.predict(sizes[self.levels[0]], plain_graphed) or 0.0

            def affordable(level: Level) -> bool:  # a re-timing step costs a few plain steps at most
                return (self.cost.predict(sizes[level], plain_graphed and level.depth == 0) or 0.0) <= \
                    RETIME_MAX_COST * plain_seconds

            retime = [level for level in rates if level.depth and self.cost.num_timings(sizes[level]) == 1
                      and rates[level] >= RETIME_WITHIN * rates[best_level] and affordable(level)]
            index = self.levels.index(best_level)
            neighbour = index + 1 if (self._step // self.explore_every) % 2 else index - 1
            candidate = self.levels[min(max(neighbour, 0), len(self.levels) - 1)]
            plain = self.levels[0]
            if best_level.depth and self.cost.age(sizes[plain], plain_graphed) >= PLAIN_RETIME_AFTER:
                # Every level is judged against the plain step, and while drafting pays it never runs:
                # a plain time taken in the engine's first steps (2x too slow on the CPU, seen at one
                # request) would otherwise stay the reference for good.
                best_level = plain
            elif retime:
                best_level = max(retime, key=lambda level: rates[level])
            elif candidate in rates and (rates[candidate] >= EXPLORE_WITHIN * rates[best_level]
                    or (self.cost.age(sizes[candidate], plain_graphed and candidate.depth == 0) >= RETIME_AFTER
                        and rates[candidate] >= RETIME_WITHIN * rates[best_level] and affordable(candidate))):
                best_level = candidate
        elif best_level.depth == 0 and rates:
            best_drafting = max((rate for level, rate in rates.items() if level.depth), default=0.0)
            if best_drafting < PLAIN_STREAK_MARGIN * MIN_GAIN * plain_rate:
                self._plain_streak = (tuple(request_ids), num_other_tokens)
        if best_level.depth:
            if self.outcome.holds(len(request_ids)):
                best_level = self.levels[0]  # drafting at this batch size delivered less than plain steps
            else:
                self.outcome.expect(len(request_ids), plain_rate)
        self.last_level = best_level
        active_set = set(active)
        return [best_level if rid in active_set else self.levels[0] for rid in request_ids]

    def _goodput(self, level: Level, request_ids: list[str], num_other_tokens: int, num_idle: int,
                 chains: dict[str | None, list[float]], graphed: bool = False) -> tuple[float, int] | None:
        """(expected emitted tokens per second, batched tokens) of a step at ``level``. ``chains``: each
        request's ``chain_emitted``, and every request's under None; ``graphed``: the step would be
        replayed as a CUDA graph."""
        emitted_total, tokens = float(num_idle), num_other_tokens
        # Requests without figures of their own all expect the same (every request's, or the prior):
        # one lookup for them, so that a 32-request step does not pay ~300 lookups per step.
        is_chain = level.candidates == 1  # trees are priced by their own averages, not by chain positions
        own = [rid for rid in request_ids if (is_chain and rid in chains)
               or ((stats := self.request_stats.get(rid)) is not None and level in stats.emitted)]
        shared = len(request_ids) - len(own)
        any_request = self._expected_any_request(level, chains[None]) if level.depth else (1.0, 0.0)
        if shared:
            emitted, nodes = self._expected(level, None, chains[None] if is_chain else None, any_request)
            emitted_total += shared * emitted
            tokens += shared * (1 + int(round(nodes)))
        for rid in own:
            emitted, nodes = self._expected(level, rid, chains.get(rid, chains[None]) if is_chain else None,
                                            any_request)
            emitted_total += emitted
            tokens += 1 + int(round(nodes))
        seconds = self.cost.predict(tokens, graphed)
        if seconds is None:
            return None
        if level.depth:
            seconds += self.proposal_seconds.get(level, 0.0) * len(request_ids)
        return emitted_total / max(seconds, 1e-9), tokens
