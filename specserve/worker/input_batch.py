"""Turn a SchedulerOutput into the flat tensors one model forward needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specserve.attention.metadata import AttentionMetadata
from specserve.core.outputs import SchedulerOutput


@dataclass
class InputBatch:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn: AttentionMetadata
    # Per scheduled request: the row of its last real token, and the rows of its draft tokens.
    last_rows: list[int]
    draft_rows: list[list[int]]


def spec_depths(parents: list[int]) -> list[int]:
    """Depth (1-based) of each draft token in its candidate tree; parents come before children."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def tree_mask(num_real: int, parents: list[int]) -> torch.Tensor:
    """Mask [q, q] over the new tokens: real tokens are causal, a draft sees the real tokens and its
    ancestors. Drafts sit after the real tokens in slot order, so their positions (for RoPE) are
    their tree depth past the last real token, not their slot index."""
    num = num_real + len(parents)
    mask = torch.zeros(num, num, dtype=torch.bool)
    mask[:, :num_real] = torch.tril(torch.ones(num, num_real, dtype=torch.bool), diagonal=0)
    mask[num_real:, :num_real] = True
    for j, parent in enumerate(parents):
        row = num_real + j
        if parent >= 0:
            mask[row, num_real:] = mask[num_real + parent, num_real:]
        mask[row, row] = True
    return mask


def is_chain(parents: list[int]) -> bool:
    return all(p == j - 1 for j, p in enumerate(parents))


def build_input_batch(out: SchedulerOutput, block_size: int, device: torch.device) -> InputBatch:
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_start_loc = [0]
    seq_lens: list[int] = []
    masks: list[torch.Tensor | None] = []
    last_rows: list[int] = []
    draft_rows: list[list[int]] = []
    max_blocks = max((len(s.block_ids) for s in out.scheduled), default=1)
    tables = torch.zeros(len(out.scheduled), max(max_blocks, 1), dtype=torch.long)
    for i, item in enumerate(out.scheduled):
        start = item.num_computed_tokens
        end = start + item.num_new_tokens
        block_ids = item.block_ids
        num_spec = len(item.spec_token_ids)
        row0 = len(input_ids)
        input_ids.extend(item.request.token_ids[start:end])
        input_ids.extend(item.spec_token_ids)
        positions.extend(range(start, end))
        positions.extend(end - 1 + d for d in spec_depths(item.spec_parents))
        for slot_index in range(start, end + num_spec):
            slots.append(block_ids[slot_index // block_size] * block_size + slot_index % block_size)
        seq_lens.append(end + num_spec)
        query_start_loc.append(len(input_ids))
        masks.append(None if is_chain(item.spec_parents) else tree_mask(item.num_new_tokens, item.spec_parents))
        tables[i, :len(block_ids)] = torch.tensor(block_ids, dtype=torch.long)
        last_rows.append(row0 + item.num_new_tokens - 1)
        draft_rows.append(list(range(row0 + item.num_new_tokens, row0 + item.num_new_tokens + num_spec)))
    attn = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
        query_start_loc=query_start_loc,
        seq_lens=seq_lens,
        block_tables=tables.to(device),
        block_size=block_size,
        custom_masks=masks if any(m is not None for m in masks) else [],
    )
    return InputBatch(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        attn=attn,
        last_rows=last_rows,
        draft_rows=draft_rows,
    )
