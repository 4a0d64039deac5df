"""Chained content hashes of full KV blocks, the keys of the prefix cache.

The KV of a token depends on every token before it, so a block's key must name the whole prefix,
not only its own tokens: ``hash_i = sha256(hash_{i-1} || len || tokens_i || extra_key)``. Two blocks
share a hash only when their token prefixes (and extra keys) are equal, up to sha256 collisions.

``extra_key`` separates caches that must never mix for the same tokens (a LoRA adapter, a
multimodal input, a cache salt). It is folded into every block of the chain; pass the same value
when looking up and when caching. Only full blocks are hashed: a partial block is still being
written.

Digests are stable within a process and across processes on the same machine (tokens are packed
as native 64-bit ints); they are not meant to be persisted across architectures.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

BlockHash = bytes  # a 32-byte sha256 digest

# Parent of block 0. No real sha256 digest is all zeros in practice.
ROOT_BLOCK_HASH: BlockHash = bytes(32)

ExtraKey = str | int | tuple[object, ...] | None


def hash_block_tokens(
    parent_hash: BlockHash | None, token_ids: Sequence[int], extra_key: ExtraKey = None
) -> BlockHash:
    """The key of one full block whose prefix (all blocks before it) has key ``parent_hash``."""
    hasher = hashlib.sha256(parent_hash if parent_hash is not None else ROOT_BLOCK_HASH)
    hasher.update(len(token_ids).to_bytes(4, "little"))
    hasher.update(array("q", token_ids).tobytes())
    if extra_key is not None:
        hasher.update(repr(extra_key).encode())
    return hasher.digest()


def extend_block_hashes(
    block_hashes: list[BlockHash],
    token_ids: Sequence[int],
    block_size: int,
    num_full_blocks: int,
    extra_key: ExtraKey = None,
) -> None:
    """Append to ``block_hashes`` the chained keys of blocks ``len(block_hashes)..num_full_blocks-1``.

    ``block_hashes`` must already hold the keys of the leading blocks of ``token_ids``; the chain
    continues from its last entry, so each block is hashed once over a request's life.
    """
    if num_full_blocks * block_size > len(token_ids):
        raise ValueError(
            f"{num_full_blocks} full blocks of {block_size} need {num_full_blocks * block_size} "
            f"tokens, got {len(token_ids)}"
        )
    parent = block_hashes[-1] if block_hashes else None
    for i in range(len(block_hashes), num_full_blocks):
        parent = hash_block_tokens(parent, token_ids[i * block_size : (i + 1) * block_size], extra_key)
        block_hashes.append(parent)
