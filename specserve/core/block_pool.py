"""BlockPool: reference counts, the free queue and the prefix-cache map of the KV blocks.

A block is a plain int id in ``0..num_blocks-1`` naming one page of the KV cache. Each block has a
reference count (how many request block tables hold it) and an optional content hash.

Invariants (checked by ``check_integrity``):
  * ``ref_cnt >= 0`` for every block.
  * The free queue holds exactly the blocks with ``ref_cnt == 0``, each once, so
    ``num_free_blocks + num_used_blocks == num_blocks``.
  * ``cached[h] == b`` iff ``block_hash[b] == h``: the map and the per-block hashes agree, and one
    hash names at most one block.
  * A block with a hash is immutable: its KV holds exactly the tokens its hash names. It may sit in
    the free queue (ref 0) and still be reused by a cache hit until allocation evicts it.

Eviction is LRU over freed blocks: ``decref`` to zero appends to the back of the free queue,
``allocate`` takes from the front (least recently freed first) and drops the hash of a cached block
it takes. ``incref`` on a block with ref 0 (a cache hit) pulls it out of the queue.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

from specserve.core.block_hash import BlockHash


class IntegrityError(AssertionError):
    """An internal invariant of the block accounting is broken (a bug, never a caller mistake)."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._ref_cnts: list[int] = [0] * num_blocks
        self._block_hashes: list[BlockHash | None] = [None] * num_blocks
        # Blocks with ref 0 in eviction order (front = next to reuse); values unused.
        self._free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[BlockHash, int] = {}

    # ---- counts ---------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks that ``allocate`` can hand out, evictable cached blocks included."""
        return len(self._free_queue)

    @property
    def num_used_blocks(self) -> int:
        """Blocks with ref_cnt > 0."""
        return self.num_blocks - len(self._free_queue)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks that hold a hash (used or evictable)."""
        return len(self._cached)

    def ref_cnt(self, block_id: int) -> int:
        return self._ref_cnts[block_id]

    def block_hash(self, block_id: int) -> BlockHash | None:
        return self._block_hashes[block_id]

    def free_block_ids(self) -> list[int]:
        """The free queue in eviction order (first = next to be allocated). For tests and debugging."""
        return list(self._free_queue)

    # ---- allocation and references ---------------------------------------------------------------

    def allocate(self, num_blocks: int) -> list[int]:
        """Take ``num_blocks`` blocks from the front of the free queue, each with ref 1 and no hash."""
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be >= 0, got {num_blocks}")
        if num_blocks > len(self._free_queue):
            raise ValueError(f"need {num_blocks} free blocks, have {len(self._free_queue)}")
        block_ids = []
        for _ in range(num_blocks):
            block_id, _ = self._free_queue.popitem(last=False)
            assert self._ref_cnts[block_id] == 0
            self._evict(block_id)
            self._ref_cnts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def incref(self, block_ids: Sequence[int]) -> None:
        """Add one reference to each block; a free block (a cache hit) leaves the free queue."""
        for block_id in block_ids:
            self._check_id(block_id)
            if self._ref_cnts[block_id] == 0 and self._block_hashes[block_id] is None:
                raise ValueError(f"block {block_id} is free and holds no cached content")
        for block_id in block_ids:
            if self._ref_cnts[block_id] == 0:
                del self._free_queue[block_id]
            self._ref_cnts[block_id] += 1

    def decref(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block, in order; a block reaching 0 joins the back of the
        free queue and keeps its hash, so it stays a cache hit until evicted."""
        for block_id, count in Counter(block_ids).items():
            self._check_id(block_id)
            if self._ref_cnts[block_id] < count:
                raise ValueError(
                    f"block {block_id} has ref_cnt {self._ref_cnts[block_id]}, cannot drop {count}"
                )
        for block_id in block_ids:
            self._ref_cnts[block_id] -= 1
            if self._ref_cnts[block_id] == 0:
                self._free_queue[block_id] = None

    # ---- prefix cache ---------------------------------------------------------------------------

    def lookup(self, block_hash: BlockHash) -> int | None:
        """The block holding this content, used or evictable, or None."""
        return self._cached.get(block_hash)

    def cache_block(self, block_id: int, block_hash: BlockHash) -> bool:
        """Register a used, full block under ``block_hash``. Returns False (and changes nothing) when
        another block already holds that hash; the existing mapping wins."""
        self._check_id(block_id)
        if self._ref_cnts[block_id] == 0:
            raise ValueError(f"block {block_id} is free; only used blocks can be cached")
        current = self._block_hashes[block_id]
        if current is not None:
            if current != block_hash:
                raise ValueError(f"block {block_id} already cached under another hash")
            return True
        if block_hash in self._cached:
            return False
        self._block_hashes[block_id] = block_hash
        self._cached[block_hash] = block_id
        return True

    def reset_prefix_cache(self) -> None:
        """Forget every hash. Used blocks stay allocated; their content just stops being shareable."""
        self._cached.clear()
        self._block_hashes = [None] * self.num_blocks

    def _evict(self, block_id: int) -> None:
        block_hash = self._block_hashes[block_id]
        if block_hash is not None:
            del self._cached[block_hash]
            self._block_hashes[block_id] = None

    def _check_id(self, block_id: int) -> None:
        if not 0 <= block_id < self.num_blocks:
            raise ValueError(f"block id {block_id} out of range 0..{self.num_blocks - 1}")

    # ---- invariants ------------------------------------------------------------------------------

    def check_integrity(self) -> None:
        """Raise IntegrityError naming the first broken invariant (see the module docstring)."""
        if len(self._free_queue) != len(set(self._free_queue)):
            raise IntegrityError("free queue has duplicates")
        for block_id in self._free_queue:
            if not 0 <= block_id < self.num_blocks:
                raise IntegrityError(f"free queue holds invalid block id {block_id}")
        for block_id, ref_cnt in enumerate(self._ref_cnts):
            if ref_cnt < 0:
                raise IntegrityError(f"block {block_id} has negative ref_cnt {ref_cnt}")
            in_queue = block_id in self._free_queue
            if ref_cnt > 0 and in_queue:
                raise IntegrityError(f"block {block_id} is free and referenced (ref_cnt {ref_cnt})")
            if ref_cnt == 0 and not in_queue:
                raise IntegrityError(f"block {block_id} has ref_cnt 0 but is not in the free queue")
        num_used = sum(1 for ref_cnt in self._ref_cnts if ref_cnt > 0)
        if num_used + len(self._free_queue) != self.num_blocks:
            raise IntegrityError(
                f"{num_used} used + {len(self._free_queue)} free != {self.num_blocks} blocks"
            )
        num_hashed = 0
        for block_id, block_hash in enumerate(self._block_hashes):
            if block_hash is None:
                continue
            num_hashed += 1
            if self._cached.get(block_hash) != block_id:
                raise IntegrityError(f"block {block_id} has a hash that the cache map does not name it by")
        if num_hashed != len(self._cached):
            raise IntegrityError(
                f"cache map has {len(self._cached)} entries, blocks hold {num_hashed} hashes"
            )
