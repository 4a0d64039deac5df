"""What the speculation policy has measured about acceptance.

Two kinds of figures:

- ``ChainAcceptance``: for single-chain drafts, the chance that the k-th draft token is accepted
  once the k-1 before it were, for every position k. One step at depth d with L accepted drafts
  tells positions 1 .. min(d, L + 1) at once, so every chain depth's expectation,
  ``1 + sum_k prod_{j<=k} p_j``, moves with every step, whichever depth ran. Per-level averages of
  tokens per step did not: a level's figure was as old as the last time it ran, so a deep level
  measured on hard text kept its low figure while a shallow one followed easier text up, and the
  policy sat at the shallow one (held-out chat, one request: depth 2-3 for most steps and 1.98
  tokens per step, against 2.25 for a forced depth-5 chain).
- ``AcceptanceStats``: per level, averages of tokens emitted per step and draft nodes per step. Trees
  (several candidates) have no chain structure to exploit and use the emitted average; every level
  uses the node average (prompt lookup proposes fewer tokens than asked when the text does not repeat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specserve.spec.policy import Level


def ema(old: float | None, value: float, decay: float) -> float:
    """Exponential moving average; the first observation is taken as is."""
    return value if old is None else decay * old + (1 - decay) * value


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


STALE_HALF_LIFE = 16  # steps (simulated varying text: 8, 16, 32, 64 gave 0.97, 0.98, 0.97, 0.95 of the best fixed depth)


@dataclass(slots=True)
class PositionAcceptance:
    rate: float  # EMA of the draft at this position being accepted, when reached
    count: int  # steps that reached it
    seen_at: int  # the chain's num_steps when it was last reached


@dataclass
class ChainAcceptance:
    """Per draft position (index k-1 for position k): an EMA of whether the k-th draft token was
    accepted, over the steps that reached it (proposed it, with every draft before it accepted)."""

    decay: float
    positions: list[PositionAcceptance] = field(default_factory=list)
    num_steps: int = 0

    def observe(self, num_drafts: int, num_accepted: int) -> None:
        self.num_steps += 1
        for k in range(min(num_drafts, num_accepted + 1)):
            hit = 1.0 if k < num_accepted else 0.0
            if k == len(self.positions):
                self.positions.append(PositionAcceptance(hit, 1, self.num_steps))
            else:
                position = self.positions[k]
                position.rate = ema(position.rate, hit, self.decay)
                position.count += 1
                position.seen_at = self.num_steps

    def blended(self, depth: int, prior_steps: int, prior: list[float] | float) -> list[float]:
        """Rates for positions 1 .. depth: this estimate weighed count / (count + prior_steps) against a
        prior: ``prior[k]`` for a list (a request's own figures against every request's); for a number,
        that number at the first position and the blended rate of the position before at the others
        (a deeper draft is assumed as likely as the deepest measured until it has been measured itself).
        """
        out: list[float] = []
        for k in range(depth):
            fallback = prior[k] if isinstance(prior, list) else (out[-1] if out else prior)
            if k < len(self.positions):
                position = self.positions[k]
                weight = position.count / (position.count + prior_steps)
                # A position not reached for a while (the policy drafts shallower now) is taken to
                # follow its prior again, half-way after STALE_HALF_LIFE steps: its figure dates from
                # other text, and deeper drafts must not stay priced out once the text gets easier.
                weight *= 0.5 ** ((self.num_steps - position.seen_at) / STALE_HALF_LIFE)
                out.append(weight * position.rate + (1 - weight) * fallback)
            else:
                out.append(fallback)
        return out


def expected_emitted(rates: list[float]) -> list[float]:
    """Expected tokens emitted per step by a chain of each depth 0 .. len(rates), the bonus included:
    1 + sum over positions k <= depth of the chance that drafts 1..k are all accepted."""
    out, reach = [1.0], 1.0
    for rate in rates:
        reach *= rate
        out.append(out[-1] + reach)
    return out
