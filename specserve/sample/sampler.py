"""Sampler: one token per logits row, plus optional logprobs.

Greedy rows take the argmax of the penalized logits. Random rows are drawn from
``probs_from_logits`` with the exponential race: argmax_i p_i / E_i with E_i ~ Exp(1) i.i.d. is
a sample from p (E_i / p_i ~ Exp(p_i), and the smallest of independent exponentials is i with
probability p_i / sum p). It needs one batched kernel and no host round trip, unlike a per-row
multinomial.

Seeds: a row with a generator draws its V exponentials from that generator alone, so a seeded
request gets the same tokens whatever else is in the batch. Rows without one share the global RNG.

The only host syncs are the final ``.tolist()`` calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specserve.sample.logits_processors import apply_penalties_and_scaling, probs_from_logits
from specserve.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingState:
    """One row of logits: the request's params and the tokens its penalties look at."""

    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    # Seeded per request (params.seed) on the logits' device; None = global RNG.
    generator: torch.Generator | None = None


@dataclass(slots=True)
class TokenLogprobs:
    """Logprobs of one sampled token under the raw model distribution."""

    token_id: int
    logprob: float
    rank: int  # 1 = the raw model's most likely token
    top_token_ids: list[int]  # the params.logprobs most likely tokens, best first
    top_logprobs: list[float]


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]  # [R]
    logprobs: list[TokenLogprobs | None]  # [R]; None where params.logprobs is None
    token_ids_tensor: torch.Tensor  # [R] int64 on the logits' device, for feeding the next step


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """The per-request generator SamplingState expects: None when the request has no seed."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def sample_from_probs(probs: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """Draw one token per row of probs [R, V] with the exponential race. Returns int64 [R]."""
    num_rows = probs.shape[0]
    noise = torch.empty_like(probs)  # [R, V] of Exp(1)
    unseeded = [i for i, s in enumerate(states) if s.generator is None]
    if len(unseeded) == num_rows:
        noise.exponential_()
    else:
        if unseeded:
            idx = torch.tensor(unseeded, dtype=torch.int64).to(probs.device, non_blocking=True)
            shared = torch.empty(len(unseeded), probs.shape[1], device=probs.device).exponential_()
            noise.index_copy_(0, idx, shared)
        for i, s in enumerate(states):
            if s.generator is not None:
                noise[i].exponential_(generator=s.generator)
    # An exact 0 draw would give p / 0 = nan for masked tokens; clamp it away.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


class Sampler:
    """Stateless; an object so the model runner can hold one and a subclass can swap the rule."""

    def sample(
        self, logits: torch.Tensor, states: Sequence[SamplingState], eos_token_ids: Sequence[int] = ()
    ) -> SamplerOutput:
        """logits: [R, V] raw model logits, one SamplingState per row."""
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(f"expected logits [{len(states)}, V], got {tuple(logits.shape)}")
        scaled = apply_penalties_and_scaling(logits, states, eos_token_ids)  # [R, V] float32
        tokens = scaled.argmax(dim=-1)  # [R]; the answer for greedy rows
        random_rows = [i for i, s in enumerate(states) if not s.params.greedy]
        if len(random_rows) == len(states):
            tokens = sample_from_probs(probs_from_logits(scaled, states), states)
        elif random_rows:
            idx = torch.tensor(random_rows, dtype=torch.int64).to(logits.device, non_blocking=True)
            sub_states = [states[i] for i in random_rows]
            sub_probs = probs_from_logits(scaled.index_select(0, idx), sub_states)
            tokens = tokens.index_copy(0, idx, sample_from_probs(sub_probs, sub_states))
        token_ids: list[int] = tokens.tolist()
        return SamplerOutput(
            token_ids=token_ids,
            logprobs=_compute_logprobs(logits, tokens, states),
            token_ids_tensor=tokens,
        )


def _compute_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, states: Sequence[SamplingState]
) -> list[TokenLogprobs | None]:
    result: list[TokenLogprobs | None] = [None] * len(states)
    rows = [i for i, s in enumerate(states) if s.params.logprobs is not None]
    if not rows:
        return result
    idx = torch.tensor(rows, dtype=torch.int64).to(logits.device, non_blocking=True)
    # Log-softmax of the RAW model logits, before penalties, temperature and truncation; this is
    # what vLLM and the OpenAI API report by default, and it is never -inf for a sampled token.
    raw = logits.index_select(0, idx).float().log_softmax(dim=-1)  # [L, V]
    chosen = tokens.index_select(0, idx)[:, None]  # [L, 1]
    chosen_lp = raw.gather(1, chosen)  # [L, 1]
    ranks = (raw > chosen_lp).sum(dim=-1) + 1  # [L]
    num_top = max(states[i].params.logprobs or 0 for i in rows)
    top_lp, top_ids = raw.topk(num_top, dim=-1) if num_top else (raw[:, :0], chosen[:, :0])
    chosen_l, chosen_lp_l, ranks_l = chosen[:, 0].tolist(), chosen_lp[:, 0].tolist(), ranks.tolist()
    top_lp_l, top_ids_l = top_lp.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        n = states[i].params.logprobs or 0
        result[i] = TokenLogprobs(
            token_id=chosen_l[j],
            logprob=chosen_lp_l[j],
            rank=ranks_l[j],
            top_token_ids=top_ids_l[j][:n],
            top_logprobs=top_lp_l[j][:n],
        )
    return result
