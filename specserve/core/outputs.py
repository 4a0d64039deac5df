"""Plain-data messages between the scheduler and the model runner (ints and lists, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field

from specserve.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """One request's share of a step.

    The runner feeds ``request.token_ids[num_computed_tokens : num_computed_tokens + num_new_tokens]``
    followed by ``spec_token_ids`` (draft tokens to verify), at positions starting at
    ``num_computed_tokens``. ``spec_parents[j]`` is the index (within spec_token_ids) of draft token
    j's parent in the candidate tree, or -1 when its parent is the last real token; a plain chain
    has parents [-1, 0, 1, ...].
    """

    request: Request  # read-only for the runner
    num_computed_tokens: int
    num_new_tokens: int  # real (non-draft) tokens fed this step
    block_ids: list[int]
    spec_token_ids: list[int] = field(default_factory=list)
    spec_parents: list[int] = field(default_factory=list)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_scheduled_tokens(self) -> int:
        return self.num_new_tokens + len(self.spec_token_ids)

    @property
    def needs_sample(self) -> bool:
        """True once this step's tokens reach the end of what is known: the model must sample."""
        return self.num_computed_tokens + self.num_new_tokens >= self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_batched_tokens: int
    block_copies: list[tuple[int, int]]  # copy-on-write (src_block, dst_block), done before the forward
    finished_request_ids: list[str]  # requests gone since the last step (runner drops their state)
    num_preempted: int = 0

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True)
class RequestStepResult:
    """What the runner produced for one request: tokens to append (accepted drafts + one sampled)."""

    request_id: str
    token_ids: list[int]
    logprobs: list[object] = field(default_factory=list)  # TokenLogprobs per token, if requested
    num_draft_tokens: int = 0
    num_accepted_draft_tokens: int = 0
    # Drafts for the next step (a tree; see ScheduledRequest.spec_parents).
    next_spec_token_ids: list[int] = field(default_factory=list)
    next_spec_parents: list[int] = field(default_factory=list)
