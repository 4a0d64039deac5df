"""Adaptive speculation: how many draft tokens and candidates each request gets next step.

The choice maximises expected goodput, emitted tokens per second of step time:

    sum_i E[emitted_i(level_i)] / T(num_batched_tokens)

- ``T(n)`` is learned from the step times the engine observes for decode steps (an EMA per bucket of
  batch token counts, interpolated). Beyond the largest bucket seen it grows by the per-token cost of
  the prefill steps observed (a compute-bound rate), or, before any prefill, proportionally to n: an
  unmeasured larger batch is never assumed free. Prefill steps never enter the buckets themselves: a
  1000-token prefill would make interpolated mid-size decode steps look far cheaper than they are.
- Proposing drafts costs time too (the speculator's forward, per request): measured apart from the
  base step (an EMA of seconds per proposing request at each level) and added to ``T`` for that level.
- ``E[emitted]`` for a level (depth d, c candidates) is measured: an EMA of tokens emitted per step
  (bonus included) at that level, globally and per request. An unmeasured level starts from a prior,
  1 + d * (accepted drafts per unit of depth measured so far at any level; 1 before any), so it is
  tried while speculation looks promising and skipped once it plainly does not pay. A little
  exploration (one step in ``explore_every``) keeps estimates fresh, but only towards a neighbouring
  level predicted within EXPLORE_WITHIN of the best: on a saturated machine exploring a level already
  known to lose would cost throughput for nothing.

Because both terms are measurements, a saturated machine (T grows linearly in n) makes extra draft
tokens unprofitable and the policy falls back to no speculation smoothly, with no batch-size threshold.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field


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
# A speculative level must promise this much more goodput than no speculation. The cost model is an
# EMA over noisy step times (and extrapolates unseen sizes), so a predicted gain of a few percent is
# within its error: at 32 requests on the 2-core EPYC, levels predicted ~5% ahead measured 20% behind.
MIN_GAIN = 1.10
# Exploration only visits a neighbouring level whose predicted goodput is at least this share of the
# chosen level's (at 32 requests, a one-token draft step measured ~0.7x of a plain one's goodput).
EXPLORE_WITHIN = 0.85


def ema(old: float | None, value: float, decay: float) -> float:
    """Exponential moving average; the first observation is taken as is."""
    return value if old is None else decay * old + (1 - decay) * value


class StepCostModel:
    """Step seconds as a function of batched tokens, from observations."""

    def __init__(self, decay: float = 0.8) -> None:
        self.decay = decay
        self.buckets: dict[int, float] = {}  # bucket lower edge -> EMA seconds, decode steps only
        self.seconds_per_prefill_token: float | None = None  # EMA over prefill steps of >= 16 tokens

    @staticmethod
    def bucket(num_tokens: int) -> int:
        return 1 if num_tokens <= 1 else int(1.25 ** math.floor(math.log(num_tokens, 1.25)))

    def observe(self, num_tokens: int, seconds: float, decode_only: bool = True) -> None:
        if not decode_only:
            if num_tokens >= 16:
                self.seconds_per_prefill_token = ema(self.seconds_per_prefill_token, seconds / num_tokens, self.decay)
            return
        key = self.bucket(num_tokens)
        self.buckets[key] = ema(self.buckets.get(key), seconds, self.decay)

    def predict(self, num_tokens: int) -> float | None:
        if not self.buckets:
            return None
        keys = sorted(self.buckets)
        n = max(num_tokens, 1)
        pos = bisect.bisect_left(keys, n)
        if pos < len(keys) and keys[pos] == n:
            return self.buckets[n]
        if pos == 0:
            return self.buckets[keys[0]]  # fewer tokens than ever seen: at most as costly
        if pos == len(keys):  # beyond what was seen
            last = keys[-1]
            per_token = self.buckets[last] / last
            if self.seconds_per_prefill_token is not None:
                per_token = self.seconds_per_prefill_token
            return self.buckets[last] + (n - last) * per_token
        lo, hi = keys[pos - 1], keys[pos]
        frac = (n - lo) / (hi - lo)
        return self.buckets[lo] + frac * (self.buckets[hi] - self.buckets[lo])


@dataclass
class AcceptanceStats:
    """EMA of emitted tokens per step at each level, and the draft size that level produced."""

    emitted: dict[Level, float] = field(default_factory=dict)
    nodes: dict[Level, float] = field(default_factory=dict)
    count: dict[Level, int] = field(default_factory=dict)
    decay: float = 0.95

    def observe(self, level: Level, emitted: int, num_nodes: int) -> None:
        for table, value in ((self.emitted, float(emitted)), (self.nodes, float(num_nodes))):
            table[level] = ema(table.get(level), value, self.decay)
        self.count[level] = self.count.get(level, 0) + 1


class SpeculationPolicy:
    def __init__(self, mode: str, max_depth: int, max_candidates: int, explore_every: int = 16) -> None:
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"speculation must be auto, on or off, got {mode!r}")
        self.mode = mode
        self.max_depth = max_depth
        self.max_candidates = max_candidates
        self.explore_every = explore_every
        self.levels = [Level(0, 1)] + [Level(d, 1) for d in range(1, max_depth + 1)]
        self.levels += [Level(max_depth, c) for c in range(2, max_candidates + 1)]
        self.cost = StepCostModel()
        self.proposal_seconds: dict[Level, float] = {}  # EMA of proposal seconds per proposing request
        self.global_stats = AcceptanceStats()
        self.request_stats: dict[str, AcceptanceStats] = {}
        # Per request: EMA of accepted drafts per draft token, whatever the level. Requests below
        # MIN_RATE sit out (no drafts) until their estimate is reset for a retry.
        self.request_rate: dict[str, float] = {}
        self.drafts_per_depth: float | None = None  # EMA of accepted drafts / level depth, any level
        self.global_rate: float | None = None  # EMA of accepted drafts per draft token, all requests
        self._step = 0
        self.last_level: Level = self.levels[-1]

    # ---- observations ------------------------------------------------------------------------
    def observe_step(self, num_tokens: int, seconds: float, decode_only: bool = True) -> None:
        """``decode_only``: every request fed one real token (plus drafts), no prompt chunk."""
        self.cost.observe(num_tokens, seconds, decode_only)

    def observe_proposal(self, level: Level, num_requests: int, seconds: float) -> None:
        self.proposal_seconds[level] = ema(self.proposal_seconds.get(level), seconds / max(num_requests, 1), 0.8)

    def observe_request(self, request_id: str, level: Level, emitted: int, num_nodes: int) -> None:
        self.global_stats.observe(level, emitted, num_nodes)
        if level.depth:
            self.drafts_per_depth = ema(self.drafts_per_depth, (emitted - 1) / level.depth, 0.9)
        self.request_stats.setdefault(request_id, AcceptanceStats(decay=0.8)).observe(level, emitted, num_nodes)
        if num_nodes:
            rate = (emitted - 1) / num_nodes
            self.global_rate = ema(self.global_rate, rate, 0.95)
            start = self.request_rate.get(request_id, self.global_rate)
            self.request_rate[request_id] = ema(start, rate, REQUEST_RATE_DECAY)

    def release(self, request_id: str) -> None:
        self.request_stats.pop(request_id, None)
        self.request_rate.pop(request_id, None)

    # ---- decisions ---------------------------------------------------------------------------
    def expected(self, level: Level, request_id: str | None) -> tuple[float, float]:
        """(expected emitted tokens, expected draft nodes) at a level for one request."""
        if level.depth == 0:
            return 1.0, 0.0
        stats = self.request_stats.get(request_id) if request_id else None
        glob = self.global_stats
        if stats is not None and level in stats.emitted:
            if level not in glob.emitted:
                return stats.emitted[level], stats.nodes[level]
            # A request's own figures count in proportion to how many steps they rest on: a few
            # unlucky steps must not stop a request whose drafts pay on average.
            weight = stats.count[level] / (stats.count[level] + REQUEST_PRIOR_STEPS)
            return (weight * stats.emitted[level] + (1 - weight) * glob.emitted[level],
                    weight * stats.nodes[level] + (1 - weight) * glob.nodes[level])
        if level in glob.emitted:
            return glob.emitted[level], glob.nodes[level]
        # Prior for an untried level: the acceptance seen so far at other levels (or every draft
        # accepted, before any), spread along one path.
        per_depth = 1.0 if self.drafts_per_depth is None else self.drafts_per_depth
        return 1.0 + level.depth * per_depth, float(level.depth * level.candidates)

    def choose(self, request_ids: list[str], num_other_tokens: int = 0) -> list[Level]:
        """One level per request for the next step."""
        if self.mode == "off" or not request_ids:
            return [self.levels[0]] * len(request_ids)
        if self.mode == "on":
            return [self.levels[-1]] * len(request_ids)
        self._step += 1
        if self._step % (4 * self.explore_every) == 0:
            self.request_rate.clear()  # let requests that sat out try again
        active = [rid for rid in request_ids if self.request_rate.get(rid, 1.0) >= MIN_RATE]
        num_idle = len(request_ids) - len(active)
        best_level, best_rate, plain_rate = self.levels[0], -1.0, 0.0
        rates: dict[Level, float] = {}
        for level in self.levels:
            rate = self._goodput(level, active, num_other_tokens + num_idle, num_idle)
            if rate is None:  # no decode step timed yet: measure the plain step first, then explore
                best_level, rates = self.levels[0], {}
                break
            rates[level] = rate
            if level.depth == 0:
                plain_rate = rate
            elif rate < plain_rate * MIN_GAIN:
                continue
            if rate > best_rate:
                best_level, best_rate = level, rate
        if self._step % self.explore_every == 0 and rates:
            index = self.levels.index(best_level)
            neighbour = index + 1 if (self._step // self.explore_every) % 2 else index - 1
            candidate = self.levels[min(max(neighbour, 0), len(self.levels) - 1)]
            if rates[candidate] >= EXPLORE_WITHIN * rates[best_level]:
                best_level = candidate
        self.last_level = best_level
        active_set = set(active)
        return [best_level if rid in active_set else self.levels[0] for rid in request_ids]

    def _goodput(self, level: Level, request_ids: list[str], num_other_tokens: int,
                 num_idle: int = 0) -> float | None:
        emitted_total, tokens = float(num_idle), num_other_tokens
        # Requests without figures of their own at this level all expect the same (global or prior):
        # one lookup for them, so that a 32-request step does not pay ~300 lookups per step.
        own = [rid for rid in request_ids
               if (stats := self.request_stats.get(rid)) is not None and level in stats.emitted]
        shared = len(request_ids) - len(own)
        if shared:
            emitted, nodes = self.expected(level, None)
            emitted_total += shared * emitted
            tokens += shared * (1 + int(round(nodes)))
        for rid in own:
            emitted, nodes = self.expected(level, rid)
            emitted_total += emitted
            tokens += 1 + int(round(nodes))
        seconds = self.cost.predict(tokens)
        if seconds is None:
            return None
        if level.depth:
            seconds += self.proposal_seconds.get(level, 0.0) * len(request_ids)
        return emitted_total / max(seconds, 1e-9)
