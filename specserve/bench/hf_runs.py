"""The same runs through transformers' generate on the same weights (the baseline)."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def load_hf(model_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


@torch.inference_mode()
def hf_single_decode(model: torch.nn.Module, prompt_ids: list[int], max_tokens: int, pad_id: int,
                     prompt_lookup: int | None = None) -> tuple[float, float]:
    """(decode tokens/s, prefill seconds): decode rate from the difference of two generate calls."""
    ids = torch.tensor([prompt_ids], device=_device(model))
    kwargs: dict[str, object] = {"do_sample": False, "pad_token_id": pad_id}
    if prompt_lookup:
        kwargs["prompt_lookup_num_tokens"] = prompt_lookup
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, **kwargs)
    total = time.perf_counter() - start
    return (max_tokens - 1) / max(total - prefill, 1e-9), prefill


@torch.inference_mode()
def hf_static_batch(model: torch.nn.Module, prompts: list[list[int]], max_tokens: int, pad_id: int) -> tuple[float, int]:
    """One left-padded static batch; returns (seconds, generated tokens)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(_device(model)), mask.to(_device(model))
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                         do_sample=False, pad_token_id=pad_id)
    seconds = time.perf_counter() - start
    return seconds, (out.shape[1] - width) * len(prompts)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
