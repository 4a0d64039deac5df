"""KVCacheManager: the KV blocks each request owns, with prefix caching and copy-on-write.

Ranges a request owns: its block table ``block_ids`` covers slots ``0..len(block_ids) * block_size - 1``;
the token at position ``p`` lives in block ``block_ids[p // block_size]`` at offset ``p % block_size``.
The table may reach past the computed tokens (slots allocated for tokens not yet run).

Sharing: a block may sit in several tables (prefix-cache hits, ``fork``). Two kinds of block are
read-only: shared ones (``ref_cnt > 1``) and cached ones (they hold a hash, so their KV must keep
matching it). Full blocks below ``num_computed_tokens`` are never written, so they share freely.
When an allocation's new tokens land in a read-only block, this request's table gets a fresh block
in its place (copy-on-write) and drops its reference to the old one. If the old block already held
computed tokens of this request (it is the block of position ``num_computed_tokens`` and that
position is not block-aligned), the pair ``(src, dst)`` is queued: the model runner must copy the
KV of every queued pair (``pop_pending_copies``) before the forward that writes ``dst``, in list
order or reading all sources before writing any destination. The table changes in place then, so
whoever mirrors it must re-read ``get_block_ids``.

Prefix cache: ``cache_full_blocks`` offers each newly full, computed block under its chained hash
(``block_hash.py``); ``get_computed_blocks`` returns the longest chain of hits, taking no
references, so pass its result to ``allocate_slots`` before anything else can allocate (and evict).

Per-request invariants: ``len(block_hashes) <= num_cached_blocks <= len(block_ids)``; a table holds
a block at most once; summed over requests, the references to a block equal its ``ref_cnt``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from specserve.core.block_hash import BlockHash, extend_block_hashes, hash_block_tokens
from specserve.core.block_pool import BlockPool, IntegrityError


class ComputedBlocks(NamedTuple):
    block_ids: list[int]  # cached blocks covering the leading tokens, in order
    num_computed_tokens: int  # len(block_ids) * block_size


class PrefixCacheStats(NamedTuple):
    queries: int  # tokens looked up by get_computed_blocks
    hits: int  # of those, tokens found in the cache

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass(slots=True)
class _RequestBlocks:
    block_ids: list[int]
    # Chained hashes of the leading full blocks, as far as computed so far (may lag behind hits).
    block_hashes: list[BlockHash]
    # Leading blocks whose content is final and already offered to the prefix cache.
    num_cached_blocks: int


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.block_pool = BlockPool(num_blocks)
        self._requests: dict[str, _RequestBlocks] = {}
        self._pending_copies: list[tuple[int, int]] = []
        self._num_queried_tokens = 0
        self._num_hit_tokens = 0

    # ---- counts ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return self.block_pool.num_free_blocks

    @property
    def num_used_blocks(self) -> int:
        return self.block_pool.num_used_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by some request."""
        return self.block_pool.num_used_blocks / self.block_pool.num_blocks

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._num_queried_tokens, self._num_hit_tokens)

    def get_block_ids(self, request_id: str) -> list[int]:
        """A copy of the request's block table ([] for a request that holds no blocks)."""
        req = self._requests.get(request_id)
        return list(req.block_ids) if req is not None else []

    # ---- prefix cache ---------------------------------------------------------------------------

    def get_computed_blocks(self, token_ids: Sequence[int]) -> ComputedBlocks:
        """The longest chain of cached full blocks that prefixes ``token_ids``. At least one token is
        always left to compute (the forward must produce logits). Takes no references."""
        if not self.enable_prefix_caching:
            return ComputedBlocks([], 0)
        block_size = self.block_size
        max_hit_blocks = max(0, (len(token_ids) - 1) // block_size)
        hit_block_ids: list[int] = []
        parent_hash: BlockHash | None = None
        for i in range(max_hit_blocks):
            parent_hash = hash_block_tokens(parent_hash, token_ids[i * block_size : (i + 1) * block_size])
            block_id = self.block_pool.lookup(parent_hash)
            if block_id is None:
                break
            hit_block_ids.append(block_id)
        num_hit_tokens = len(hit_block_ids) * block_size
        self._num_queried_tokens += len(token_ids)
        self._num_hit_tokens += num_hit_tokens
        return ComputedBlocks(hit_block_ids, num_hit_tokens)

    def cache_full_blocks(self, request_id: str, token_ids: Sequence[int], num_computed_tokens: int) -> None:
        """Offer to the prefix cache every block of this request that is now full of computed tokens.
        Pass only verified tokens (never unaccepted speculative ones). A hash already held by another
        block keeps its block; this one then stays uncached."""
        if not self.enable_prefix_caching:
            return
        req = self._get(request_id)
        num_full_blocks = num_computed_tokens // self.block_size
        if num_full_blocks > len(req.block_ids):
            raise ValueError(
                f"{num_computed_tokens} computed tokens exceed the {len(req.block_ids)} blocks of {request_id!r}"
            )
        if num_full_blocks <= req.num_cached_blocks:
            return
        extend_block_hashes(req.block_hashes, token_ids, self.block_size, num_full_blocks)
        for i in range(req.num_cached_blocks, num_full_blocks):
            self.block_pool.cache_block(req.block_ids[i], req.block_hashes[i])
        req.num_cached_blocks = num_full_blocks

    def reset_prefix_cache(self) -> None:
        """Forget all cached content. Blocks in use stay allocated but are no longer shareable."""
        self.block_pool.reset_prefix_cache()

    # ---- allocation -----------------------------------------------------------------------------

    def allocate_slots(
        self,
        request_id: str,
        num_computed_tokens: int,
        num_new_tokens: int,
        new_computed_blocks: Sequence[int] = (),
    ) -> list[int] | None:
        """Grow the request's table to cover ``num_computed_tokens + num_new_tokens`` slots.

        ``num_computed_tokens`` counts the tokens of ``new_computed_blocks`` (cache hits from
        ``get_computed_blocks``, accepted only while the table is empty). Returns the newly allocated
        block ids (copy-on-write replacements first, in table order, then appended blocks), or None
        with no state change when there are not enough free blocks.
        """
        block_size = self.block_size
        if num_computed_tokens < 0 or num_new_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {num_computed_tokens}, {num_new_tokens}")
        req = self._requests.get(request_id)
        block_ids = req.block_ids if req is not None else []
        hit_block_ids = list(new_computed_blocks)
        if hit_block_ids:
            if block_ids:
                raise ValueError(
                    f"{request_id!r} already holds blocks; cache hits are for its first allocation"
                )
            if len(hit_block_ids) * block_size > num_computed_tokens:
                raise ValueError("num_computed_tokens must count the tokens of new_computed_blocks")
            for block_id in hit_block_ids:
                if self.block_pool.block_hash(block_id) is None:
                    raise ValueError(f"block {block_id} is not cached (evicted since get_computed_blocks?)")
        num_table_blocks = len(block_ids) + len(hit_block_ids)
        if num_computed_tokens > num_table_blocks * block_size:
            raise ValueError(
                f"{num_computed_tokens} computed tokens exceed the {num_table_blocks} blocks of {request_id!r}"
            )
        num_required_blocks = _cdiv(num_computed_tokens + num_new_tokens, block_size)
        num_new_blocks = max(0, num_required_blocks - num_table_blocks)
        first_written = num_computed_tokens // block_size
        cow_indices: list[int] = []
        if num_new_tokens > 0:
            for i in range(first_written, min(num_required_blocks, len(block_ids))):
                block_id = block_ids[i]
                if self.block_pool.ref_cnt(block_id) > 1 or self.block_pool.block_hash(block_id) is not None:
                    cow_indices.append(i)
        # Hits with ref 0 sit in the free queue: taking them shrinks what allocate can hand out.
        num_free_hits = sum(1 for block_id in set(hit_block_ids) if self.block_pool.ref_cnt(block_id) == 0)
        if num_new_blocks + len(cow_indices) + num_free_hits > self.block_pool.num_free_blocks:
            return None

        # Committed from here on.
        if req is None:
            req = self._requests[request_id] = _RequestBlocks([], [], 0)
            block_ids = req.block_ids
        if hit_block_ids:
            # Before allocate, so that allocate cannot evict the hits.
            self.block_pool.incref(hit_block_ids)
            block_ids.extend(hit_block_ids)
            req.num_cached_blocks = len(hit_block_ids)
        if num_new_tokens > 0:
            # Blocks from first_written on get new content: their old hashes no longer describe it.
            del req.block_hashes[first_written:]
            req.num_cached_blocks = min(req.num_cached_blocks, first_written)
        new_block_ids = self.block_pool.allocate(len(cow_indices) + num_new_blocks)
        replaced_block_ids = []
        for i, dst in zip(cow_indices, new_block_ids):
            src = block_ids[i]
            block_ids[i] = dst
            replaced_block_ids.append(src)
            if i * block_size < num_computed_tokens:
                self._pending_copies.append((src, dst))
        block_ids.extend(new_block_ids[len(cow_indices) :])
        # After allocate, so that a replaced block is not handed straight back as its own copy.
        self.block_pool.decref(replaced_block_ids)
        return new_block_ids

    def pop_pending_copies(self) -> list[tuple[int, int]]:
        """The (src, dst) KV block copies queued by copy-on-write since the last call."""
        copies, self._pending_copies = self._pending_copies, []
        return copies

    def fork(self, parent_id: str, child_id: str) -> None:
        """Give ``child_id`` a table sharing every block of ``parent_id`` (parallel sampling)."""
        parent = self._get(parent_id)
        if child_id in self._requests:
            raise ValueError(f"request {child_id!r} already exists")
        self.block_pool.incref(parent.block_ids)
        self._requests[child_id] = _RequestBlocks(
            list(parent.block_ids), list(parent.block_hashes), parent.num_cached_blocks
        )

    def truncate(self, request_id: str, num_tokens: int) -> None:
        """Keep only the blocks needed for the first ``num_tokens`` tokens (after rejected speculation).
        A kept block that is cut into will be copied on its next write if it is shared or cached."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        req = self._get(request_id)
        num_keep = _cdiv(num_tokens, self.block_size)
        if num_keep < len(req.block_ids):
            dropped = req.block_ids[num_keep:]
            del req.block_ids[num_keep:]
            self.block_pool.decref(dropped[::-1])
            self._drop_orphan_copies()
        num_full_blocks = num_tokens // self.block_size
        del req.block_hashes[num_full_blocks:]
        req.num_cached_blocks = min(req.num_cached_blocks, num_full_blocks)

    def free(self, request_id: str) -> None:
        """Release every block of the request, tail first so that the tail is evicted before the
        (more shareable) head. Unknown ids are ignored."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        self.block_pool.decref(req.block_ids[::-1])
        self._drop_orphan_copies()

    def _drop_orphan_copies(self) -> None:
        # A queued copy into a block nobody holds any more would write into a block that may be
        # handed to another request next.
        if self._pending_copies:
            pool = self.block_pool
            self._pending_copies = [(src, dst) for src, dst in self._pending_copies if pool.ref_cnt(dst) > 0]

    def _get(self, request_id: str) -> _RequestBlocks:
        req = self._requests.get(request_id)
        if req is None:
            raise ValueError(f"unknown request {request_id!r}")
        return req

    # ---- invariants ------------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Raise IntegrityError on a broken invariant of the pool or of the per-request tables."""
        self.block_pool.check_integrity()
        ref_cnts: Counter[int] = Counter()
        for request_id, req in self._requests.items():
            if len(set(req.block_ids)) != len(req.block_ids):
                raise IntegrityError(f"request {request_id!r} holds a block twice: {req.block_ids}")
            if not len(req.block_hashes) <= req.num_cached_blocks <= len(req.block_ids):
                raise IntegrityError(
                    f"request {request_id!r}: {len(req.block_hashes)} hashes, "
                    f"{req.num_cached_blocks} cached, {len(req.block_ids)} blocks"
                )
            ref_cnts.update(req.block_ids)
        for block_id in range(self.block_pool.num_blocks):
            if self.block_pool.ref_cnt(block_id) != ref_cnts[block_id]:
                raise IntegrityError(
                    f"block {block_id}: ref_cnt {self.block_pool.ref_cnt(block_id)}, "
                    f"held by {ref_cnts[block_id]} request tables"
                )
        for src, dst in self._pending_copies:
            if self.block_pool.ref_cnt(dst) == 0:
                raise IntegrityError(f"pending copy {src} -> {dst} targets a free block")
