"""Attention metadata: everything a paged-attention call needs about one flat batch.

The batch is a concatenation of per-request token runs (prefill chunks, decode tokens,
speculative candidates). Request i owns query rows ``query_start_loc[i]:query_start_loc[i+1]``;
its context (cached tokens plus the new ones) has ``seq_lens[i]`` tokens, the new ones last.
New token j of request i sits at context index ``seq_lens[i] - query_len + j``.

Masking: by default new tokens are causal among themselves. A request may instead carry a
``custom_mask`` of shape [query_len, query_len] (True = may attend) over its new tokens, used for
tree-shaped speculative candidates; every new token always sees all cached tokens before them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64; flat slot = block_id * block_size + offset
    query_start_loc: list[int]  # [num_reqs + 1] cumulative query lengths (cu_seqlens_q)
    seq_lens: list[int]  # [num_reqs] context length per request, new tokens included
    block_tables: torch.Tensor  # [num_reqs, max_num_blocks] int64, padded with 0
    block_size: int
    # Per request: None (causal) or a bool tensor [query_len, query_len] over the new tokens.
    custom_masks: list[torch.Tensor | None] = field(default_factory=list)
    # Filled lazily by backends that want cached derived tensors (one step, all layers).
    cache: dict[str, object] = field(default_factory=dict)

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens)

    def query_len(self, i: int) -> int:
        return self.query_start_loc[i + 1] - self.query_start_loc[i]

    def mask_for(self, i: int) -> torch.Tensor | None:
        return self.custom_masks[i] if self.custom_masks else None

    @classmethod
    def contiguous_prompts(cls, lens: list[int], block_size: int, device: torch.device) -> AttentionMetadata:
        """Whole prompts of these lengths on a cache laid out contiguously, outside any block manager:
        request i owns blocks ``i * blocks_per_seq ...`` (for throwaway forward passes)."""
        blocks_per_seq = -(-max(lens) // block_size)
        slots = torch.cat([torch.arange(n) + i * blocks_per_seq * block_size for i, n in enumerate(lens)])
        query_start_loc = [0]
        for n in lens:
            query_start_loc.append(query_start_loc[-1] + n)
        block_tables = torch.arange(blocks_per_seq * len(lens), device=device).view(len(lens), blocks_per_seq)
        return cls(slot_mapping=slots.to(device), query_start_loc=query_start_loc, seq_lens=list(lens),
                   block_tables=block_tables, block_size=block_size)
