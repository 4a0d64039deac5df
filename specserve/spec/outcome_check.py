"""A check of what drafting steps deliver against what plain steps were predicted to.

The policy (spec/policy.py) chooses levels from predictions: a cost model of step times per size and
acceptance figures per level. Anything those predictions miss makes `auto` draft at a loss: a cost the
model prices from neighbouring sizes and never sees directly, a kernel compiled in the middle of a run,
step sizes that never repeat. On an H200, eagerly, `auto` ran 8 requests at 0.41x of plain decode
(docs/gpu/README.md). This check looks only at the outcome, per number of requests in the step:

    tokens emitted by drafting steps  /  tokens plain steps would have emitted in the same seconds

(the second from the policy's plain-step prediction made when it chose to draft). Once that ratio,
over about the last WINDOW drafting steps, falls below MIN_RATIO, drafting at that batch size stops for
HOLD_STEPS engine steps; then the figures start afresh and the policy may try again. Each trial that
fails again doubles the hold (up to MAX_HOLD_STEPS), so that the trials cost a few percent at most;
a trial that passes resets it. Where drafting pays (1.6-2x at one request on the CPU) the ratio stays
far above the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 32  # drafting steps the decayed sums mostly rest on
MIN_STEPS = 16.0  # decayed count of drafting steps before the check may act
MIN_RATIO = 0.95  # drafting must deliver at least this share of the predicted plain tokens
HOLD_STEPS = 256  # engine steps without drafting, at that batch size, once the check acts
MAX_HOLD_STEPS = 16 * HOLD_STEPS


def batch_bucket(num_requests: int) -> int:
    """Exact up to 8 requests, then powers of two (9-16, 17-32, ...)."""
    if num_requests <= 8:
        return max(num_requests, 1)
    return 1 << (num_requests - 1).bit_length()


@dataclass(slots=True)
class OutcomeWindow:
    emitted: float = 0.0  # decayed sum of tokens emitted by drafting steps
    plain: float = 0.0  # decayed sum of tokens plain steps were predicted to emit in the same seconds
    steps: float = 0.0  # decayed count of drafting steps
    held_until: int = -1  # engine step (the check's count) until which drafting is held off
    failed_trials: int = 0  # holds in a row at this batch size (each doubles the next one)


class DraftingOutcomeCheck:
    def __init__(self) -> None:
        self.windows: dict[int, OutcomeWindow] = {}
        self.num_steps = 0  # engine steps observed
        self.num_holds = 0  # times drafting was held off
        self._expected: tuple[int, float] | None = None  # (requests, predicted plain tokens/s) of the next step

    def holds(self, num_requests: int) -> bool:
        window = self.windows.get(batch_bucket(num_requests))
        return window is not None and self.num_steps < window.held_until

    def expect(self, num_requests: int, plain_tokens_per_second: float) -> None:
        """The policy chose to draft in the next step of ``num_requests`` requests, where a plain step
        was predicted to emit ``plain_tokens_per_second``."""
        self._expected = (num_requests, plain_tokens_per_second)

    def observe(self, num_requests: int, drafted: bool, emitted: int, seconds: float) -> None:
        """One engine step: ``emitted`` tokens in ``seconds`` (the whole step, proposals included)."""
        self.num_steps += 1
        expected, self._expected = self._expected, None
        if not drafted or expected is None or expected[0] != num_requests or seconds <= 0.0:
            return
        window = self.windows.setdefault(batch_bucket(num_requests), OutcomeWindow())
        decay = 1.0 - 1.0 / WINDOW
        window.emitted = decay * window.emitted + emitted
        window.plain = decay * window.plain + seconds * expected[1]
        window.steps = decay * window.steps + 1.0
        if window.steps < MIN_STEPS:
            return
        if window.emitted < MIN_RATIO * window.plain:
            hold = min(HOLD_STEPS << window.failed_trials, MAX_HOLD_STEPS)
            self.windows[batch_bucket(num_requests)] = OutcomeWindow(
                held_until=self.num_steps + hold, failed_trials=window.failed_trials + 1)
            self.num_holds += 1
        else:
            window.failed_trials = 0

    def ratio(self, num_requests: int) -> float | None:
        """Drafting's delivered tokens over the predicted plain ones at this batch size (None before any)."""
        window = self.windows.get(batch_bucket(num_requests))
        return window.emitted / window.plain if window is not None and window.plain > 0 else None
