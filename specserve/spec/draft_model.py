"""Draft-model speculation: a smaller model with the base model's tokenizer drafts a greedy chain.

The draft model runs on a paged KV cache of its own (its own tensors and its own ``KVCacheManager``,
no prefix caching), so nothing of it touches the base model's cache or scheduler.

What the draft cache holds, per request: ``cached_token_ids[r]`` lists the tokens whose K/V sits in
the request's draft blocks, at positions ``0..len - 1``; the block table covers exactly those slots.
Each ``propose`` call brings it in line with the request's history ``token_ids``:

1. keep the longest common prefix of ``cached_token_ids[r]`` and ``token_ids`` (minus at least the
   last token, which must be fed to get logits); drafts rejected by the base model differ from the
   history and are cut off here (``truncate``);
2. one batched forward feeds every request's missing tokens (a whole prompt for a new request, the
   bonus/recovered token and any accepted draft not yet cached otherwise); its last row's argmax is
   draft token 1;
3. ``depth - 1`` batched single-token forwards feed draft token k and take draft token k + 1.

Draft tokens 1..depth-1 stay in the cache: when the base model accepts them, the next call only
feeds what is new. The last draft token is never fed (its K/V would only be needed if accepted, and
then it comes in step 2 with the bonus token). Slots are allocated up front for the whole call, so
a call that cannot get its blocks drops that request's draft cache and proposes nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from specserve.attention.metadata import AttentionMetadata
from specserve.core.kv_cache_manager import KVCacheManager
from specserve.spec.draft_tree import DraftTree
from specserve.spec.proposer import ProposalRequest

if TYPE_CHECKING:
    from specserve.engine.model_setup import ModelBundle

DEFAULT_MAX_DEPTH = 4
DEFAULT_KV_CACHE_MEMORY = 256 * 1024**2  # bytes of draft K/V when from_path is not told num_blocks
# The draft cache never needs more than this many full-length requests (the scheduler's default
# max_num_seqs): it caps the block count of tiny draft models under a generous memory budget.
_MAX_FULL_LENGTH_REQUESTS = 64


@dataclass(slots=True)
class _Run:
    """One request's part of a draft forward."""

    request_id: str
    block_ids: list[int]  # the request's draft block table (allocated for the whole call)
    num_computed_tokens: int  # tokens already in the draft cache before this forward
    token_ids: list[int]  # tokens fed by this forward


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    """Binary search on slice equality (C-speed compares; the mismatch is usually near the end)."""
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while lo + 1 < hi:  # invariant: a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class DraftModelProposer:
    name = "draft"
    needs_hidden = False

    def __init__(self, model: nn.Module | ModelBundle, num_blocks: int, block_size: int = 16,
                 max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        """``model``: a loaded specserve model (with ``.arch``) or a ModelBundle holding one."""
        net = model if isinstance(model, nn.Module) else model.model
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        self.model = net
        self.arch = net.arch
        self.max_depth = max_depth
        self.block_size = block_size
        self.vocab_size: int = self.arch.vocab_size
        self.max_model_len: int = self.arch.max_position_embeddings
        weight = net.get_input_embeddings().weight
        self.device = weight.device
        self.kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=False)
        shape = (num_blocks, block_size, self.arch.num_kv_heads, self.arch.head_dim)
        # [num_blocks, block_size, num_kv_heads, head_dim] per layer, for K and for V
        self.kv_caches = [(torch.zeros(shape, dtype=weight.dtype, device=self.device),
                           torch.zeros(shape, dtype=weight.dtype, device=self.device))
                          for _ in range(self.arch.num_layers)]
        self.cached_token_ids: dict[str, list[int]] = {}

    @classmethod
    def from_path(cls, path: str | Path, dtype: torch.dtype, device: torch.device,
                  num_blocks: int | None = None, block_size: int = 16, max_depth: int = DEFAULT_MAX_DEPTH,
                  kv_cache_memory: int = DEFAULT_KV_CACHE_MEMORY) -> DraftModelProposer:
        """Load the draft model (an HF folder or a .gguf) and size its cache from ``kv_cache_memory``."""
        from specserve.model.loader import load_model, resolve_model_dir
        from specserve.worker.model_runner import kv_bytes_per_block

        if not str(path):
            raise ValueError("draft speculator needs a model path: --speculator draft:PATH")
        model, arch = load_model(resolve_model_dir(str(path)), dtype, torch.device(device))
        if num_blocks is None:
            per_block = kv_bytes_per_block(arch.num_layers, block_size, arch.num_kv_heads, arch.head_dim, dtype)
            blocks_per_request = -(-arch.max_position_embeddings // block_size)
            num_blocks = min(kv_cache_memory // per_block, _MAX_FULL_LENGTH_REQUESTS * blocks_per_request)
            if num_blocks < 1:
                raise ValueError(f"kv_cache_memory {kv_cache_memory} B holds no draft block of {per_block} B")
        return cls(model, num_blocks, block_size, max_depth)

    # ---- the Proposer interface ------------------------------------------------------------------

    @torch.inference_mode()
    def propose(self, requests: list[ProposalRequest], hidden: torch.Tensor | None) -> list[DraftTree]:
        num_keeps = [self._check(req) for req in requests]  # before any state changes
        drafts: dict[str, list[int]] = {}
        depths: dict[str, int] = {}
        runs: list[_Run] = []
        for req, num_keep in zip(requests, num_keeps):
            run, depth = self._prepare(req, num_keep)
            if run is not None:
                runs.append(run)
                depths[req.request_id] = depth
                drafts[req.request_id] = []
        step = 0
        while runs:
            for run, token_id in zip(runs, self._forward(runs)):
                self.cached_token_ids[run.request_id].extend(run.token_ids)
                drafts[run.request_id].append(token_id)
            step += 1
            runs = [_Run(run.request_id, run.block_ids, run.num_computed_tokens + len(run.token_ids),
                         [drafts[run.request_id][-1]])
                    for run in runs if depths[run.request_id] > step]
        return [DraftTree.chain(drafts.get(req.request_id, [])) for req in requests]

    def release(self, request_id: str) -> None:
        self.kv.free(request_id)
        self.cached_token_ids.pop(request_id, None)

    @property
    def num_cached_requests(self) -> int:
        return len(self.cached_token_ids)

    # ---- internals -------------------------------------------------------------------------------

    def _check(self, req: ProposalRequest) -> int:
        """How many leading tokens of the request's draft cache still match its history; ValueError
        when a token the draft would have to feed is outside its vocabulary."""
        cached = self.cached_token_ids.get(req.request_id, [])
        num_keep = max(0, min(_common_prefix_len(cached, req.token_ids), len(req.token_ids) - 1))
        bad = [t for t in req.token_ids[num_keep:] if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} of request {req.request_id!r} is outside the draft model's "
                             f"vocabulary (size {self.vocab_size}); the draft needs the base model's tokenizer")
        return num_keep

    def _prepare(self, req: ProposalRequest, num_keep: int) -> tuple[_Run | None, int]:
        """Cut the request's draft cache to its first ``num_keep`` tokens and allocate the slots of
        this call; (None, 0) when it drafts nothing this step."""
        rid = req.request_id
        token_ids = req.token_ids
        # The highest position fed is len(token_ids) - 1 + depth - 1, and it must fit the draft model.
        depth = min(req.max_depth, self.max_model_len - len(token_ids) + 1)
        if depth <= 0 or not token_ids:
            self.release(rid)
            return None, 0
        new_token_ids = token_ids[num_keep:]
        cached = self.cached_token_ids.get(rid)
        if cached is not None:
            self.kv.truncate(rid, num_keep)
            del cached[num_keep:]
        else:
            self.cached_token_ids[rid] = []
        if self.kv.allocate_slots(rid, num_keep, len(new_token_ids) + depth - 1) is None:
            self.release(rid)  # out of draft blocks: start over for this request later
            return None, 0
        return _Run(rid, self.kv.get_block_ids(rid), num_keep, new_token_ids), depth

    def _forward(self, runs: list[_Run]) -> list[int]:
        """One batched forward of every run's tokens; the greedy next token after each run."""
        block_size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        last_rows: list[int] = []
        tables = torch.zeros(len(runs), max(len(run.block_ids) for run in runs), dtype=torch.long)
        for i, run in enumerate(runs):
            start = run.num_computed_tokens
            end = start + len(run.token_ids)
            input_ids.extend(run.token_ids)
            positions.extend(range(start, end))
            slots.extend(run.block_ids[p // block_size] * block_size + p % block_size for p in range(start, end))
            query_start_loc.append(len(input_ids))
            seq_lens.append(end)
            last_rows.append(len(input_ids) - 1)
            tables[i, :len(run.block_ids)] = torch.tensor(run.block_ids, dtype=torch.long)
        device = self.device
        attn = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            query_start_loc=query_start_loc, seq_lens=seq_lens,
            block_tables=tables.to(device), block_size=block_size)
        hidden = self.model(torch.tensor(input_ids, dtype=torch.long, device=device),
                            torch.tensor(positions, dtype=torch.long, device=device), self.kv_caches, attn)
        logits = self.model.compute_logits(hidden[torch.tensor(last_rows, device=device)])  # [num_runs, vocab]
        next_ids: list[int] = logits.argmax(dim=-1).tolist()
        return next_ids
