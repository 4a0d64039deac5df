"""BlockPool and block hashing: reference counts, LRU free queue, prefix-cache map, integrity checks."""

from __future__ import annotations

import random

import pytest

from specserve.core.block_hash import extend_block_hashes, hash_block_tokens
from specserve.core.block_pool import BlockPool, IntegrityError


def _h(i: int) -> bytes:
    return hash_block_tokens(None, [i])


# ---- hashing ---------------------------------------------------------------------------------------


def test_hash_is_chained_over_the_prefix() -> None:
    a = hash_block_tokens(None, [1, 2])
    assert a == hash_block_tokens(None, [1, 2])
    assert a != hash_block_tokens(None, [2, 1])
    # Same tokens, different prefix: different key.
    assert hash_block_tokens(a, [3, 4]) != hash_block_tokens(None, [3, 4])
    assert hash_block_tokens(a, [3, 4]) != hash_block_tokens(hash_block_tokens(None, [9, 9]), [3, 4])
    assert hash_block_tokens(None, [1, 2], extra_key="lora-a") != a
    assert len(a) == 32


def test_extend_block_hashes_continues_the_chain() -> None:
    tokens = list(range(10))
    hashes: list[bytes] = []
    extend_block_hashes(hashes, tokens, 4, 1)
    extend_block_hashes(hashes, tokens, 4, 2)
    assert hashes == [hash_block_tokens(None, tokens[:4]), hash_block_tokens(hashes[0], tokens[4:8])]
    with pytest.raises(ValueError):
        extend_block_hashes(hashes, tokens, 4, 3)  # only 10 tokens


# ---- allocation ------------------------------------------------------------------------------------


def test_allocate_takes_from_front_and_counts() -> None:
    pool = BlockPool(4)
    assert pool.allocate(2) == [0, 1]
    assert (pool.num_free_blocks, pool.num_used_blocks) == (2, 2)
    assert pool.ref_cnt(0) == 1 and pool.ref_cnt(2) == 0
    pool.check_integrity()


def test_allocate_too_many_raises_and_changes_nothing() -> None:
    pool = BlockPool(3)
    pool.allocate(2)
    with pytest.raises(ValueError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1 and pool.free_block_ids() == [2]
    with pytest.raises(ValueError):
        pool.allocate(-1)
    pool.check_integrity()


def test_constructor_rejects_empty_pool() -> None:
    with pytest.raises(ValueError):
        BlockPool(0)


def test_decref_appends_to_back_lru_order() -> None:
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    pool.decref([blocks[2]])
    pool.decref([blocks[0]])
    pool.decref([blocks[3], blocks[1]])
    assert pool.free_block_ids() == [2, 0, 3, 1]
    # Least recently freed first.
    assert pool.allocate(3) == [2, 0, 3]


def test_shared_block_frees_only_at_zero() -> None:
    pool = BlockPool(2)
    [b] = pool.allocate(1)
    pool.incref([b])
    pool.decref([b])
    assert pool.ref_cnt(b) == 1 and pool.num_used_blocks == 1
    pool.decref([b])
    assert pool.ref_cnt(b) == 0 and pool.num_free_blocks == 2


def test_decref_below_zero_is_rejected_atomically() -> None:
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    with pytest.raises(ValueError):
        pool.decref([a, b, b])
    assert pool.ref_cnt(a) == 1 and pool.ref_cnt(b) == 1
    with pytest.raises(ValueError):
        pool.decref([2])
    with pytest.raises(ValueError):
        pool.decref([7])
    pool.check_integrity()


# ---- prefix cache ----------------------------------------------------------------------------------


def test_cached_block_survives_free_and_hits_via_incref() -> None:
    pool = BlockPool(3)
    [b] = pool.allocate(1)
    assert pool.cache_block(b, _h(1))
    pool.decref([b])
    assert pool.lookup(_h(1)) == b and pool.num_cached_blocks == 1
    assert pool.num_free_blocks == 3  # evictable blocks count as free
    pool.incref([b])  # cache hit: leaves the free queue
    assert pool.ref_cnt(b) == 1 and b not in pool.free_block_ids()
    assert pool.block_hash(b) == _h(1)
    pool.check_integrity()


def test_allocating_a_cached_block_evicts_its_hash() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_block(a, _h(1))
    pool.cache_block(b, _h(2))
    pool.decref([b, a])  # b is evicted first
    assert pool.allocate(1) == [b]
    assert pool.lookup(_h(2)) is None and pool.block_hash(b) is None
    assert pool.lookup(_h(1)) == a
    pool.check_integrity()


def test_cache_block_keeps_existing_mapping() -> None:
    pool = BlockPool(3)
    a, b = pool.allocate(2)
    assert pool.cache_block(a, _h(1))
    assert not pool.cache_block(b, _h(1))
    assert pool.lookup(_h(1)) == a and pool.block_hash(b) is None
    assert pool.cache_block(a, _h(1))  # idempotent
    with pytest.raises(ValueError):
        pool.cache_block(a, _h(2))  # a block holds one content
    with pytest.raises(ValueError):
        pool.cache_block(2, _h(3))  # free block


def test_incref_of_free_uncached_block_is_rejected() -> None:
    pool = BlockPool(2)
    with pytest.raises(ValueError):
        pool.incref([0])
    assert pool.ref_cnt(0) == 0
    pool.check_integrity()


def test_reset_prefix_cache() -> None:
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.cache_block(a, _h(1))
    pool.cache_block(b, _h(2))
    pool.decref([a])
    pool.reset_prefix_cache()
    assert pool.num_cached_blocks == 0 and pool.lookup(_h(1)) is None and pool.block_hash(b) is None
    assert pool.num_used_blocks == 1
    pool.check_integrity()


# ---- integrity -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p._ref_cnts.__setitem__(3, -1), "negative"),
        (lambda p: p._ref_cnts.__setitem__(3, 1), "free and referenced"),
        (lambda p: p._free_queue.pop(3), "not in the free queue"),
        (lambda p: p._block_hashes.__setitem__(0, _h(9)), "cache map"),
        (lambda p: p._cached.__setitem__(_h(9), 1), "cache map has"),
    ],
)
def test_check_integrity_detects_corruption(corrupt: object, message: str) -> None:
    pool = BlockPool(4)
    a, _ = pool.allocate(2)
    pool.cache_block(a, _h(1))
    pool.check_integrity()
    corrupt(pool)  # type: ignore[operator]
    with pytest.raises(IntegrityError, match=message):
        pool.check_integrity()


# ---- randomized check against a naive model -------------------------------------------------------


def test_random_ops_match_a_naive_model() -> None:
    rng = random.Random(1234)
    for _ in range(30):
        num_blocks = rng.randint(1, 8)
        pool = BlockPool(num_blocks)
        refs = [0] * num_blocks
        queue = list(range(num_blocks))  # naive LRU free queue
        hashes: dict[int, bytes] = {}
        for _ in range(60):
            op = rng.randrange(4)
            used = [b for b in range(num_blocks) if refs[b] > 0]
            if op == 0:
                n = rng.randint(0, len(queue))
                got = pool.allocate(n)
                assert got == queue[:n]
                for b in got:
                    refs[b] = 1
                    hashes.pop(b, None)
                del queue[:n]
            elif op == 1 and used:
                b = rng.choice(used)
                pool.decref([b])
                refs[b] -= 1
                if refs[b] == 0:
                    queue.append(b)
            elif op == 2 and used:
                b = rng.choice(used)
                h = _h(rng.randrange(6))
                if b not in hashes and h not in hashes.values():
                    assert pool.cache_block(b, h)
                    hashes[b] = h
            elif op == 3 and hashes:
                b = rng.choice(sorted(hashes))
                assert pool.lookup(hashes[b]) == b
                pool.incref([b])
                if refs[b] == 0:
                    queue.remove(b)
                refs[b] += 1
            pool.check_integrity()
            assert pool.free_block_ids() == queue
            assert [pool.ref_cnt(b) for b in range(num_blocks)] == refs
            assert pool.num_cached_blocks == len(hashes)
