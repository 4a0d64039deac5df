"""What rank 0 tells the workers, and how: one fixed-size int64 message on the control group.

Workers hold no scheduler state. Each command is everything they need to mirror one operation of
rank 0's runner on their shard, in the order rank 0 does it:

- STEP: one forward: input ids, positions and the attention metadata (slot mapping, query starts,
  sequence lengths, block tables, tree masks). This is the step's plan in tensor form; the Python
  scheduler objects never leave rank 0.
- LOGITS: project the rows that sample; the rows' hidden states follow on the device group.
- COPY_BLOCKS / MOVE_SLOTS: copy-on-write block copies and the moves of accepted tree-draft KV.
- SHUTDOWN: leave the loop.

A message is [command, payload length, 6 command-specific numbers, payload]. Payloads up to
INLINE_CAPACITY ints (every decode step of a modest batch) ride in that one broadcast; a larger one
follows in a second. On this project's 2-core CPU box a gloo collective costs about 0.5-1 ms, so the
number of collectives per step, not their size, sets the step time.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
import torch.distributed as dist

from specserve.attention.metadata import AttentionMetadata
from specserve.distributed.parallel_state import TensorParallel

HEADER_LEN = 8  # [command, payload length, up to 6 command-specific numbers]
INLINE_CAPACITY = 2040  # payload ints carried in the header's broadcast (16 KiB message in all)


class Command(IntEnum):
    STEP = 1
    LOGITS = 2
    COPY_BLOCKS = 3
    MOVE_SLOTS = 4
    SHUTDOWN = 5


class Message(NamedTuple):
    command: Command
    meta: list[int]
    payload: torch.Tensor  # [payload length] int64, on the CPU


class ControlChannel:
    """Broadcasts from rank 0 over the gloo control group (CPU tensors on every backend)."""

    def __init__(self, tp: TensorParallel) -> None:
        self.tp = tp

    def send(self, command: Command, payload: torch.Tensor | None = None, meta: tuple[int, ...] = ()) -> None:
        assert self.tp.rank == 0, "only rank 0 sends commands"
        payload = torch.empty(0, dtype=torch.long) if payload is None else payload.to("cpu", torch.long)
        size = payload.numel()
        message = torch.zeros(HEADER_LEN + INLINE_CAPACITY, dtype=torch.long)
        message[0] = int(command)
        message[1] = size
        if meta:
            message[2:2 + len(meta)] = torch.tensor(meta, dtype=torch.long)
        if size <= INLINE_CAPACITY:
            message[HEADER_LEN:HEADER_LEN + size] = payload
        dist.broadcast(message, src=0, group=self.tp.control_group)
        if size > INLINE_CAPACITY:
            dist.broadcast(payload.contiguous(), src=0, group=self.tp.control_group)

    def receive(self) -> Message:
        message = torch.empty(HEADER_LEN + INLINE_CAPACITY, dtype=torch.long)
        dist.broadcast(message, src=0, group=self.tp.control_group)
        command, size, *meta = message[:HEADER_LEN].tolist()
        if size <= INLINE_CAPACITY:
            payload = message[HEADER_LEN:HEADER_LEN + size]
        else:
            payload = torch.empty(size, dtype=torch.long)
            dist.broadcast(payload, src=0, group=self.tp.control_group)
        return Message(Command(command), meta, payload)


def pack_step(input_ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata
              ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """One forward's inputs as (flat int64 payload, meta)."""
    num_reqs = md.num_reqs
    max_blocks = md.block_tables.shape[1]
    parts = [input_ids.cpu(), positions.cpu(), md.slot_mapping.cpu(),
             torch.tensor(md.query_start_loc, dtype=torch.long), torch.tensor(md.seq_lens, dtype=torch.long),
             md.block_tables.cpu().reshape(-1)]
    has_masks = bool(md.custom_masks)
    if has_masks:
        flags = [mask is not None for mask in md.custom_masks]
        parts.append(torch.tensor(flags, dtype=torch.long))
        parts.extend(mask.to("cpu", torch.long).reshape(-1) for mask in md.custom_masks if mask is not None)
    payload = torch.cat([p.to(torch.long) for p in parts])
    return payload, (input_ids.numel(), num_reqs, max_blocks, int(has_masks), md.block_size)


def unpack_step(payload: torch.Tensor, meta: list[int], device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    num_tokens, num_reqs, max_blocks, has_masks, block_size = meta[:5]
    sizes = [num_tokens, num_tokens, num_tokens, num_reqs + 1, num_reqs, num_reqs * max_blocks]
    input_ids, positions, slots, starts, seq_lens, tables = payload[:sum(sizes)].split(sizes)
    query_start_loc = starts.tolist()
    masks: list[torch.Tensor | None] = []
    if has_masks:
        offset = sum(sizes)
        flags = payload[offset:offset + num_reqs].tolist()
        offset += num_reqs
        for i, flag in enumerate(flags):
            if not flag:
                masks.append(None)
                continue
            q = query_start_loc[i + 1] - query_start_loc[i]
            masks.append(payload[offset:offset + q * q].view(q, q).bool())
            offset += q * q
    md = AttentionMetadata(slot_mapping=slots.to(device), query_start_loc=query_start_loc,
                           seq_lens=seq_lens.tolist(), block_tables=tables.view(num_reqs, max_blocks).to(device),
                           block_size=block_size, custom_masks=masks)
    return input_ids.to(device), positions.to(device), md


def pack_pairs(src: list[int], dst: list[int]) -> torch.Tensor:
    return torch.tensor(src + dst, dtype=torch.long)


def unpack_pairs(payload: torch.Tensor) -> tuple[list[int], list[int]]:
    values = payload.tolist()
    half = len(values) // 2
    return values[:half], values[half:]
