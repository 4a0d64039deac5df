"""Logits processing: penalties, min_tokens, temperature, then top-k / top-p / min-p.

Pipeline (one row = one position to sample; several rows may belong to one request when verifying
speculative tokens, in which case the caller gives each row its own ``output_token_ids``):

    raw logits --apply_penalties_and_scaling--> scaled logits --probs_from_logits--> probs

``probs_from_logits`` returns exactly the distribution the sampler draws from, so rejection
sampling can compare target and draft probabilities on the same footing. Greedy rows come out
one-hot at the argmax: that is the distribution greedy decoding samples from.

Every function is vectorized over rows, works on any device, and never moves data to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from specserve.sample.sampler import SamplingState

_NEG_INF = float("-inf")


def apply_penalties_and_scaling(
    logits: torch.Tensor, states: Sequence[SamplingState], eos_token_ids: Sequence[int] = ()
) -> torch.Tensor:
    """Repetition / presence / frequency penalties, min_tokens masking, temperature.

    logits: [R, V]. Returns a float32 tensor [R, V]. The input is never modified in place (the
    sampler still needs the raw logits for logprobs); when no row needs any of this, the result
    is the input itself. Rows with nothing to do cost nothing.
    Greedy rows are not divided by their (near-zero) temperature: argmax does not care.
    """
    assert logits.dim() == 2 and logits.shape[0] == len(states), "one state per logits row"
    out = logits.float()
    penalty_rows = [i for i, s in enumerate(states) if s.params.has_penalties]
    if penalty_rows:
        out = _apply_penalties(out, states, penalty_rows)
    out = _mask_stop_tokens_before_min(out, states, eos_token_ids)
    temps = [1.0 if s.params.greedy else s.params.temperature for s in states]
    if any(t != 1.0 for t in temps):
        out = out / torch.tensor(temps, dtype=torch.float32).to(out.device, non_blocking=True)[:, None]
    return out


def _pad_rows(rows: list[list[int]], pad: int) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    padded = [r + [pad] * (width - len(r)) for r in rows]
    return torch.tensor(padded, dtype=torch.int64).reshape(len(rows), width)


def _apply_penalties(out: torch.Tensor, states: Sequence[SamplingState], rows: list[int]) -> torch.Tensor:
    device, vocab = out.device, out.shape[1]
    sub_states = [states[i] for i in rows]
    row_idx = torch.tensor(rows, dtype=torch.int64).to(device, non_blocking=True)
    sub = out.index_select(0, row_idx)  # [P, V], a copy

    # Token ids padded with `vocab`; counting into V + 1 bins sends the padding to a dropped column.
    out_ids = _pad_rows([s.output_token_ids for s in sub_states], vocab).to(device, non_blocking=True)
    counts = torch.zeros(len(rows), vocab + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, out_ids, torch.ones_like(out_ids, dtype=torch.float32))
    counts = counts[:, :vocab]  # [P, V] occurrences in the output

    rep = [s.params.repetition_penalty for s in sub_states]
    if any(r != 1.0 for r in rep):
        # Prompt tokens count too (HF / vLLM semantics). Rebuilding this list every step costs
        # O(prompt_len) host work, only for requests that ask for the penalty.
        prompt_ids = _pad_rows(
            [s.prompt_token_ids for s in sub_states], vocab
        ).to(device, non_blocking=True)
        seen = torch.zeros(len(rows), vocab + 1, dtype=torch.bool, device=device)
        seen.scatter_(1, prompt_ids, True)
        seen = seen[:, :vocab] | (counts > 0)
        rep_t = torch.tensor(rep, dtype=torch.float32).to(device, non_blocking=True)[:, None]
        penalized = torch.where(sub > 0, sub / rep_t, sub * rep_t)
        sub = torch.where(seen, penalized, sub)

    freq = [s.params.frequency_penalty for s in sub_states]
    pres = [s.params.presence_penalty for s in sub_states]
    if any(f != 0.0 for f in freq) or any(p != 0.0 for p in pres):
        freq_t = torch.tensor(freq, dtype=torch.float32).to(device, non_blocking=True)[:, None]
        pres_t = torch.tensor(pres, dtype=torch.float32).to(device, non_blocking=True)[:, None]
        sub = sub - freq_t * counts - pres_t * (counts > 0).float()
    return out.index_copy(0, row_idx, sub)


def _mask_stop_tokens_before_min(
    out: torch.Tensor, states: Sequence[SamplingState], eos_token_ids: Sequence[int]
) -> torch.Tensor:
    """While a request has fewer than min_tokens outputs it may not pick EOS or a stop token."""
    rows: list[int] = []
    cols: list[int] = []
    vocab = out.shape[1]
    for i, s in enumerate(states):
        p = s.params
        if len(s.output_token_ids) >= p.min_tokens:
            continue
        banned = set(p.stop_token_ids or ())
        if not p.ignore_eos:
            banned.update(eos_token_ids)
        for t in banned:
            if 0 <= t < vocab:
                rows.append(i)
                cols.append(t)
    if not rows:
        return out
    index = torch.tensor([rows, cols], dtype=torch.int64).to(out.device, non_blocking=True)
    fill = torch.tensor(_NEG_INF, dtype=out.dtype, device=out.device)
    return out.index_put((index[0], index[1]), fill)


def apply_top_k_top_p_min_p(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """Set truncated tokens to -inf. logits: [R, V] after temperature. Returns a new tensor.

    top-k keeps ties with the k-th value; top-p keeps the smallest prefix (by descending
    probability, after top-k) whose mass reaches p; min-p keeps tokens with
    prob >= min_p * max_prob. Both truncations keep the argmax, so min-p is order independent
    and is applied in logit space: logit >= max_logit + log(min_p).
    """
    vocab = logits.shape[1]
    device = logits.device
    out = logits
    if any(s.params.has_truncation for s in states):
        # Disabled rows get k = V and p = 2 so that a single batched pass is a no-op for them.
        ks = [s.params.top_k if s.params.top_k > 0 else vocab for s in states]
        ps = [s.params.top_p if s.params.top_p < 1.0 else 2.0 for s in states]
        sorted_logits, sorted_idx = out.sort(dim=-1, descending=True)  # [R, V] each
        if any(k < vocab for k in ks):
            k_t = torch.tensor([min(k, vocab) - 1 for k in ks], dtype=torch.int64)
            k_t = k_t.to(device, non_blocking=True)
            kth = sorted_logits.gather(1, k_t[:, None])  # [R, 1]
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, _NEG_INF)
        if any(p <= 1.0 for p in ps):
            p_t = torch.tensor(ps, dtype=torch.float32).to(device, non_blocking=True)[:, None]
            sorted_probs = sorted_logits.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # exclusive cumsum
            drop = mass_before >= p_t
            drop[:, 0] = False  # the top token always survives, whatever rounding does
            sorted_logits = sorted_logits.masked_fill(drop, _NEG_INF)
        out = torch.empty_like(out).scatter_(1, sorted_idx, sorted_logits)
    min_ps = [s.params.min_p for s in states]
    if any(m > 0.0 for m in min_ps):
        log_min_p = torch.tensor(min_ps, dtype=torch.float32).log().to(device, non_blocking=True)[:, None]
        threshold = out.amax(dim=-1, keepdim=True) + log_min_p  # [R, 1]; -inf where min_p = 0
        out = out.masked_fill(out < threshold, _NEG_INF)
    return out


def probs_from_logits(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """The exact distribution a row is sampled from. logits: [R, V] from apply_penalties_and_scaling.

    Returns float32 probs [R, V]. Greedy rows are one-hot at the argmax.
    """
    probs = apply_top_k_top_p_min_p(logits, states).softmax(dim=-1)
    greedy_rows = [i for i, s in enumerate(states) if s.params.greedy]
    if greedy_rows:
        idx = torch.tensor(greedy_rows, dtype=torch.int64).to(logits.device, non_blocking=True)
        one_hot = torch.zeros(len(greedy_rows), logits.shape[1], dtype=probs.dtype, device=probs.device)
        one_hot.scatter_(1, logits.index_select(0, idx).argmax(dim=-1, keepdim=True), 1.0)
        probs = probs.index_copy(0, idx, one_hot)
    return probs
