"""Phase-2 data: the base model answers chat prompts through specserve's own engine (batched, paged).

Responses are appended to a jsonl file as each batch finishes (``prompt_ids``, ``response_ids``), so
an interrupted run resumes after the last finished batch. Greedy decoding, like the evaluation, or,
for extra answers to the same prompts, sampling at a temperature: more distinct text for the same
prompts (the labels are still the base model's greedy tokens, recomputed over that text).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specserve.engine.llm import LLM
from specserve.sampling_params import SamplingParams


def generate_responses(bundle: Any, conversations: list[list[dict[str, str]]], out_file: Path,
                       max_new_tokens: int, batch_size: int = 64, progress: Any = None,
                       requests_per_write: int = 256, temperature: float = 0.0,
                       cuda_graphs: bool = False) -> list[dict[str, Any]]:
    """Generate (or resume) responses for every conversation; returns all rows in order.

    ``batch_size`` requests run at once; ``requests_per_write`` are queued per call, so a finished
    request's slot is refilled at once instead of waiting for the slowest answer of its batch.
    ``temperature`` > 0 samples from the engine's global RNG (seed it with ``torch.manual_seed``): per
    request generators would cost one sampling call per row, and the answers only need to differ.
    """
    rows: list[dict[str, Any]] = []
    if out_file.exists():
        rows = [json.loads(line) for line in out_file.read_text().splitlines() if line.strip()]
        if progress is not None:
            progress.update(len(rows))
    if len(rows) >= len(conversations):
        return rows[:len(conversations)]
    dtype = str(bundle.dtype).removeprefix("torch.")
    # 16 MiB of KV per running request holds ~700 tokens of the default model in bfloat16
    llm = LLM(bundle=bundle, dtype=dtype, device=str(bundle.device), max_num_seqs=batch_size,
              kv_cache_memory=f"{max(2048, 16 * batch_size)}MiB", max_num_batched_tokens=max(1024, batch_size * 8),
              enable_prefix_caching=True, cuda_graphs=cuda_graphs)
    params = SamplingParams(temperature=temperature, max_tokens=max_new_tokens)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "a", encoding="utf-8") as f:
        for start in range(len(rows), len(conversations), requests_per_write):
            batch = conversations[start:start + requests_per_write]
            for out in llm.chat(batch, params):
                row = {"prompt_ids": list(out.prompt_token_ids), "response_ids": list(out.outputs[0].token_ids)}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
            f.flush()
            if progress is not None:
                progress.update(len(batch))
    if llm.engine.kv.num_used_blocks != 0:
        raise RuntimeError(f"phase-2 generation leaked {llm.engine.kv.num_used_blocks} KV blocks")
    return rows


def phase2_sequences(rows: list[dict[str, Any]]) -> tuple[list[list[int]], list[list[bool]]]:
    """Token sequences (prompt + response) and masks over the positions that produce the response."""
    seqs, masks = [], []
    for row in rows:
        prompt, response = row["prompt_ids"], row["response_ids"]
        if len(response) < 2:
            continue
        seqs.append(prompt + response)
        # the hidden state at the last prompt token is the first one the speculator sees at decode time
        masks.append([False] * (len(prompt) - 1) + [True] * (len(response) + 1))
    return seqs, masks
