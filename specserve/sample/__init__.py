"""Sampling: logits processing (penalties, temperature, top-k/p, min-p) and the token sampler."""

from __future__ import annotations

from specserve.sample.logits_processors import (
    apply_penalties_and_scaling,
    apply_top_k_top_p_min_p,
    probs_from_logits,
)
from specserve.sample.sampler import (
    Sampler,
    SamplerOutput,
    SamplingState,
    TokenLogprobs,
    make_generator,
    sample_from_probs,
)

__all__ = [
    "Sampler",
    "SamplerOutput",
    "SamplingState",
    "TokenLogprobs",
    "apply_penalties_and_scaling",
    "apply_top_k_top_p_min_p",
    "make_generator",
    "probs_from_logits",
    "sample_from_probs",
]
