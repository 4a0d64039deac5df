"""KVCacheManager property test: a hypothesis state machine drives add / step (chunked prefill,
decode with speculative drafts and rejection) / fork / rewind / free, while a simulated model runner
applies the queued block copies and writes each token's KV. Every slot holds the token prefix whose
KV it stores, so after every step every computed position of every request must hold exactly its
own prefix, and every cached block must hold the content its hash names."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from specserve.core.block_hash import hash_block_tokens
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


BLOCK_SIZE = 3
NUM_BLOCKS = 14
PROMPTS = [(1, 2, 3, 4, 5, 6, 7), (1, 2, 3, 4, 5, 6, 6, 6, 6), (1, 2, 7), (5,) * 10]


class KVCacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.m = KVCacheManager(NUM_BLOCKS, BLOCK_SIZE)
        self.slots: list[list[tuple[int, ...] | None]] = [[None] * BLOCK_SIZE for _ in range(NUM_BLOCKS)]
        self.tokens: dict[str, list[int]] = {}
        self.num_computed: dict[str, int] = {}
        self.next_id = 0

    def _new_id(self) -> str:
        self.next_id += 1
        return f"r{self.next_id}"

    def _run(self, rid: str, start: int, end: int) -> None:
        for src, dst in self.m.pop_pending_copies():
            self.slots[dst] = list(self.slots[src])
        table = self.m.get_block_ids(rid)
        for p in range(start, end):
            self.slots[table[p // BLOCK_SIZE]][p % BLOCK_SIZE] = tuple(self.tokens[rid][: p + 1])

    def _allocate(self, rid: str, num_computed: int, num_new: int, hits: list[int] | None = None) -> bool:
        before = _snapshot(self.m)
        if self.m.allocate_slots(rid, num_computed, num_new, hits or []) is None:
            assert _snapshot(self.m) == before
            return False
        return True

    @rule(
        prompt=st.sampled_from(PROMPTS),
        suffix=st.lists(st.integers(0, 2), max_size=4),
        chunk=st.integers(1, 8),
    )
    def add_request(self, prompt: tuple[int, ...], suffix: list[int], chunk: int) -> None:
        tokens = list(prompt) + suffix
        hits, num_hit = self.m.get_computed_blocks(tokens)
        assert num_hit == len(hits) * BLOCK_SIZE < len(tokens)
        for p in range(num_hit):
            assert self.slots[hits[p // BLOCK_SIZE]][p % BLOCK_SIZE] == tuple(tokens[: p + 1])
        rid = self._new_id()
        num_new = min(chunk, len(tokens) - num_hit)
        if not self._allocate(rid, num_hit, num_new, hits):
            return
        self.tokens[rid] = tokens
        self._run(rid, num_hit, num_hit + num_new)
        self.num_computed[rid] = num_hit + num_new
        self.m.cache_full_blocks(rid, tokens, self.num_computed[rid])

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), chunk=st.integers(1, 8))
    def step(self, data: st.DataObject, chunk: int) -> None:
        self._step(data.draw(st.sampled_from(sorted(self.tokens))), data, chunk)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data(), chunk=st.integers(1, 8))
    def step_all(self, data: st.DataObject, chunk: int) -> None:
        """One engine step: every request runs, in a drawn order."""
        for rid in data.draw(st.permutations(sorted(self.tokens))):
            self._step(rid, data, chunk)

    def _step(self, rid: str, data: st.DataObject, chunk: int) -> None:
        tokens, num_computed = self.tokens[rid], self.num_computed[rid]
        draft = []
        if len(tokens) - num_computed <= 1:  # decode, with speculative draft tokens
            draft = data.draw(st.lists(st.integers(0, 2), max_size=3))
            if num_computed == len(tokens):
                tokens.append(0)
            tokens.extend(draft)
        num_new = min(chunk, len(tokens) - num_computed) if not draft else len(tokens) - num_computed
        if not self._allocate(rid, num_computed, num_new):
            del tokens[len(tokens) - len(draft) :]
            return
        self._run(rid, num_computed, num_computed + num_new)
        num_computed += num_new
        if draft:  # reject a suffix of the drafts, then sample a bonus token
            num_rejected = data.draw(st.integers(0, len(draft)))
            num_computed -= num_rejected
            del tokens[num_computed:]
            tokens.append(data.draw(st.integers(0, 2)))
            self.m.truncate(rid, num_computed)
        self.num_computed[rid] = num_computed
        self.m.cache_full_blocks(rid, tokens, num_computed)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(sorted(self.tokens)))
        child = self._new_id()
        self.m.fork(parent, child)
        # Parallel sampling: the child samples its own next token.
        num_computed = self.num_computed[parent]
        self.tokens[child] = self.tokens[parent][:num_computed] + [data.draw(st.integers(0, 2))]
        self.num_computed[child] = num_computed

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def rewind(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        num_tokens = data.draw(st.integers(0, self.num_computed[rid]))
        self.m.truncate(rid, num_tokens)
        self.num_computed[rid] = num_tokens
        # The next token may differ from the one whose KV was dropped.
        self.tokens[rid][num_tokens:] = [data.draw(st.integers(0, 2))]

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.m.free(rid)
        del self.tokens[rid], self.num_computed[rid]

    @invariant()
    def integrity(self) -> None:
        self.m.check_integrity()
        pool = self.m.block_pool
        held = {b for rid in self.tokens for b in self.m.get_block_ids(rid)}
        assert pool.num_used_blocks == len(held)
        for rid, tokens in self.tokens.items():
            table = self.m.get_block_ids(rid)
            assert len(table) * BLOCK_SIZE >= self.num_computed[rid]
            for p in range(self.num_computed[rid]):
                assert self.slots[table[p // BLOCK_SIZE]][p % BLOCK_SIZE] == tuple(tokens[: p + 1]), (rid, p)
        for b in range(pool.num_blocks):
            block_hash = pool.block_hash(b)
            if block_hash is None:
                continue
            prefix = self.slots[b][-1]
            assert prefix is not None and len(prefix) % BLOCK_SIZE == 0
            assert self.slots[b] == [prefix[: len(prefix) - BLOCK_SIZE + j + 1] for j in range(BLOCK_SIZE)]
            parent = None
            for i in range(len(prefix) // BLOCK_SIZE):
                parent = hash_block_tokens(parent, prefix[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE])
            assert parent == block_hash

    def teardown(self) -> None:
        for rid in list(self.tokens):
            self.m.free(rid)
        self.m.check_integrity()
        assert self.m.num_used_blocks == 0 and self.m.usage == 0.0
        assert all(self.m.block_pool.ref_cnt(b) == 0 for b in range(NUM_BLOCKS))
        assert self.m.pop_pending_copies() == []


KVCacheMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_kv_cache_state_machine = KVCacheMachine.TestCase
