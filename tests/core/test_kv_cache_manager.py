"""KVCacheManager unit tests: prefix hits, allocation failure, copy-on-write, truncate, free order.
The hypothesis state machine lives in test_kv_cache_properties.py."""

from __future__ import annotations

import pytest

from specserve.core.kv_cache_manager import KVCacheManager


def _snapshot(m: KVCacheManager) -> object:
    pool = m.block_pool
    return (
        pool.free_block_ids(),
        [pool.ref_cnt(b) for b in range(pool.num_blocks)],
        [pool.block_hash(b) for b in range(pool.num_blocks)],
        {
            rid: (list(r.block_ids), list(r.block_hashes), r.num_cached_blocks)
            for rid, r in m._requests.items()
        },
        list(m._pending_copies),
    )


def _prefill(m: KVCacheManager, rid: str, tokens: list[int]) -> list[int]:
    """Admit a request with its whole prompt (prefix hits used), compute it, cache full blocks."""
    hits, num_hit = m.get_computed_blocks(tokens)
    assert m.allocate_slots(rid, num_hit, len(tokens) - num_hit, hits) is not None
    m.cache_full_blocks(rid, tokens, len(tokens))
    return hits


# ---- prefix cache ----------------------------------------------------------------------------------


def test_prefix_hit_shares_blocks_and_skips_tokens() -> None:
    m = KVCacheManager(num_blocks=10, block_size=4)
    prompt = list(range(10))
    assert _prefill(m, "a", prompt) == []
    hits, num_hit = m.get_computed_blocks(prompt[:8] + [99, 98, 97])
    assert hits == m.get_block_ids("a")[:2] and num_hit == 8
    assert m.allocate_slots("b", num_hit, 3, hits) == [3]
    assert m.get_block_ids("b") == [0, 1, 3]
    assert [m.block_pool.ref_cnt(b) for b in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert m.prefix_cache_stats == (10 + 11, 8)
    m.check_integrity()


def test_hit_never_covers_the_whole_prompt() -> None:
    m = KVCacheManager(num_blocks=10, block_size=4)
    _prefill(m, "a", list(range(9)))
    hits, num_hit = m.get_computed_blocks(list(range(8)))  # block-aligned: last block recomputed
    assert len(hits) == 1 and num_hit == 4
    assert m.get_computed_blocks([]) == ([], 0)


def test_different_prefix_same_block_tokens_do_not_hit() -> None:
    m = KVCacheManager(num_blocks=10, block_size=2)
    _prefill(m, "a", [1, 2, 3, 4, 5])
    assert m.get_computed_blocks([9, 9, 3, 4, 5]) == ([], 0)
    assert m.get_computed_blocks([1, 2, 9, 9, 5]).num_computed_tokens == 2


def test_prefix_caching_disabled() -> None:
    m = KVCacheManager(num_blocks=10, block_size=2, enable_prefix_caching=False)
    _prefill(m, "a", [1, 2, 3, 4, 5])
    assert m.get_computed_blocks([1, 2, 3, 4, 5]) == ([], 0)
    assert m.block_pool.num_cached_blocks == 0


def test_cache_full_blocks_keeps_existing_mapping() -> None:
    m = KVCacheManager(num_blocks=10, block_size=2)
    # Both compute the same prompt without hits (admitted in the same step).
    for rid in ("a", "b"):
        assert m.allocate_slots(rid, 0, 5) is not None
    m.cache_full_blocks("a", [1, 2, 3, 4, 5], 5)
    m.cache_full_blocks("b", [1, 2, 3, 4, 5], 5)
    assert m.block_pool.num_cached_blocks == 2
    assert m.get_computed_blocks([1, 2, 3, 4, 5]).block_ids == m.get_block_ids("a")[:2]
    m.check_integrity()


def test_cache_full_blocks_only_full_computed_blocks() -> None:
    m = KVCacheManager(num_blocks=10, block_size=4)
    m.allocate_slots("a", 0, 10)
    m.cache_full_blocks("a", list(range(10)), 7)
    assert m.block_pool.num_cached_blocks == 1
    m.cache_full_blocks("a", list(range(10)), 10)
    assert m.block_pool.num_cached_blocks == 2
    with pytest.raises(ValueError):
        m.cache_full_blocks("a", list(range(20)), 20)  # beyond the table


# ---- allocation ------------------------------------------------------------------------------------


def test_allocation_failure_leaves_state_unchanged() -> None:
    m = KVCacheManager(num_blocks=4, block_size=4)
    assert m.allocate_slots("a", 0, 10) == [0, 1, 2]
    before = _snapshot(m)
    assert m.allocate_slots("a", 10, 7) is None  # needs 2 more blocks, 1 free
    assert m.allocate_slots("b", 0, 5) is None
    assert _snapshot(m) == before and m.get_block_ids("b") == []
    assert m.allocate_slots("a", 10, 6) == [3]
    assert m.usage == 1.0


def test_free_cache_hits_are_counted_against_free_blocks() -> None:
    m = KVCacheManager(num_blocks=4, block_size=4)
    prompt = list(range(9))
    _prefill(m, "a", prompt)
    m.free("a")  # all 4 blocks free; 2 of them cached
    long_prompt = prompt[:8] + list(range(100, 112))  # 20 tokens = 5 blocks: 2 hits + 3 new
    hits, num_hit = m.get_computed_blocks(long_prompt)
    assert len(hits) == 2
    before = _snapshot(m)
    # 3 new blocks <= 4 free, but taking the 2 evictable hits leaves only 2.
    assert m.allocate_slots("b", num_hit, 12, hits) is None
    assert _snapshot(m) == before
    new = m.allocate_slots("b", num_hit, 8, hits)  # 16 tokens: 2 hits + 2 new fits exactly
    assert new is not None and not set(new) & set(hits)
    assert m.get_block_ids("b")[:2] == hits and m.num_free_blocks == 0
    m.check_integrity()


def test_allocate_rejects_caller_mistakes() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    _prefill(m, "a", list(range(9)))
    hits, num_hit = m.get_computed_blocks(list(range(9)))
    with pytest.raises(ValueError):
        m.allocate_slots("b", num_hit - 1, 2, hits)  # hits not counted as computed
    with pytest.raises(ValueError):
        m.allocate_slots("a", 8, 1, hits)  # hits only on the first allocation
    with pytest.raises(ValueError):
        m.allocate_slots("c", 4, 1)  # computed tokens beyond the table
    with pytest.raises(ValueError):
        m.allocate_slots("c", 0, -1)
    with pytest.raises(ValueError):
        KVCacheManager(num_blocks=8, block_size=0)
    m.check_integrity()


# ---- fork and copy-on-write -------------------------------------------------------------------------


def test_cow_after_fork_copies_partial_block_and_leaves_parent_untouched() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    _prefill(m, "parent", list(range(6)))  # blocks [0 full, 1 half]
    m.fork("parent", "child")
    assert m.get_block_ids("child") == [0, 1] and m.block_pool.ref_cnt(1) == 2
    assert m.allocate_slots("child", 6, 1) == [2]
    assert m.pop_pending_copies() == [(1, 2)]
    assert m.pop_pending_copies() == []
    assert m.get_block_ids("child") == [0, 2] and m.get_block_ids("parent") == [0, 1]
    assert m.block_pool.ref_cnt(1) == 1 and m.block_pool.ref_cnt(0) == 2
    # The parent now owns block 1 alone: it writes in place.
    assert m.allocate_slots("parent", 6, 1) == []
    assert m.pop_pending_copies() == []
    m.check_integrity()


def test_full_shared_blocks_need_no_copy() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    _prefill(m, "parent", list(range(8)))
    m.fork("parent", "child")
    assert m.allocate_slots("child", 8, 1) == [2]
    assert m.pop_pending_copies() == []
    assert m.get_block_ids("child") == [0, 1, 2]


def test_cow_failure_is_atomic() -> None:
    m = KVCacheManager(num_blocks=2, block_size=4)
    assert m.allocate_slots("a", 0, 6) is not None
    m.fork("a", "b")
    before = _snapshot(m)
    assert m.allocate_slots("b", 6, 1) is None  # the copy needs a free block
    assert _snapshot(m) == before


def test_fork_errors() -> None:
    m = KVCacheManager(num_blocks=4, block_size=4)
    m.allocate_slots("a", 0, 1)
    with pytest.raises(ValueError):
        m.fork("missing", "x")
    with pytest.raises(ValueError):
        m.fork("a", "a")


# ---- truncate and free -----------------------------------------------------------------------------


def test_truncate_keeps_needed_blocks() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    m.allocate_slots("a", 0, 13)  # 4 blocks
    m.truncate("a", 9)
    assert m.get_block_ids("a") == [0, 1, 2]
    m.truncate("a", 8)
    assert m.get_block_ids("a") == [0, 1]
    m.truncate("a", 100)  # never grows, never drops a needed block
    assert m.get_block_ids("a") == [0, 1]
    assert m.block_pool.free_block_ids()[-2:] == [3, 2]  # tail released first
    with pytest.raises(ValueError):
        m.truncate("a", -1)
    m.check_integrity()


def test_write_after_truncating_into_a_cached_block_copies_it() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    _prefill(m, "a", list(range(9)))  # blocks 0, 1 cached
    m.truncate("a", 6)  # speculation rejected: block 1 is cut, its cached content must survive
    assert m.allocate_slots("a", 6, 1) == [3]
    assert m.pop_pending_copies() == [(1, 3)]
    assert m.get_computed_blocks(list(range(9))).block_ids == [0, 1]
    m.check_integrity()


def test_rewriting_from_an_earlier_position_recaches_new_content() -> None:
    m = KVCacheManager(num_blocks=8, block_size=4)
    _prefill(m, "a", list(range(8)))  # blocks 0, 1 cached
    new_tokens = list(range(4)) + [9, 9, 9, 9]
    assert m.allocate_slots("a", 4, 4) == [2]  # block 1 is cached: written into a fresh block
    assert m.pop_pending_copies() == []  # nothing of it was kept
    m.cache_full_blocks("a", new_tokens, 8)
    assert m.get_computed_blocks(new_tokens + [0]).block_ids == [0, 2]
    assert m.get_computed_blocks(list(range(9))).block_ids == [0, 1]
    m.check_integrity()


def test_free_releases_tail_first_and_ignores_unknown() -> None:
    m = KVCacheManager(num_blocks=6, block_size=2)
    _prefill(m, "a", [1, 2, 3, 4, 5])  # blocks 0, 1 cached, 2 partial
    m.free("a")
    m.free("a")
    assert m.block_pool.free_block_ids() == [3, 4, 5, 2, 1, 0]
    assert m.num_used_blocks == 0
    # The shared head outlives the tail under eviction pressure.
    m.allocate_slots("b", 0, 9)  # takes 3, 4, 5, 2, 1
    assert m.get_computed_blocks([1, 2, 3]).block_ids == [0]


def test_free_drops_queued_copies_into_released_blocks() -> None:
    m = KVCacheManager(num_blocks=4, block_size=4)
    m.allocate_slots("a", 0, 2)
    m.fork("a", "b")
    m.allocate_slots("b", 2, 1)
    m.free("b")
    assert m.pop_pending_copies() == []
    m.check_integrity()
