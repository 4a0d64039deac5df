"""What every causal LM here does the same way at its ends: logits from the (possibly tied, possibly
vocab-sharded) output head, and the check that a checkpoint filled every parameter."""

from __future__ import annotations

import torch

from specserve.distributed.parallel_state import TensorParallel
from specserve.model.fast_linear import project


def head_logits(hidden: torch.Tensor, head_weight: torch.Tensor, packed_head: torch.Tensor | None,
                tp: TensorParallel | None, logits_scaling: float = 1.0) -> torch.Tensor:
    """hidden: [R, hidden] -> float32 logits [R, vocab] (Granite divides them by ``logits_scaling``)."""
    logits = project(hidden, head_weight, packed_head)
    if tp is not None:
        logits = tp.all_gather_last_dim(logits)  # [R, vocab / N] on each rank -> [R, vocab]
    logits = logits.float()
    return logits if logits_scaling == 1.0 else logits / logits_scaling


def check_no_missing_weights(missing: list[str]) -> None:
    """ValueError naming the first few parameters a checkpoint did not fill."""
    if missing:
        raise ValueError(f"missing weights: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
