"""Scheduler behaviour with a fake model whose next token is a pure function of the history.

Because the fake's output depends only on the tokens so far, any scheduling (chunks, preemption,
prefix hits, batching) must produce exactly the same outputs; block accounting must end at zero.
"""

from __future__ import annotations

import random
import zlib

import pytest

from specserve.config import SchedulerConfig
from specserve.core.kv_cache_manager import KVCacheManager
from specserve.core.outputs import RequestStepResult, SchedulerOutput
from specserve.core.scheduler import Scheduler
from specserve.request import Request, RequestStatus
from specserve.sampling_params import SamplingParams

EOS = 0


def next_token(history: list[int]) -> int:
    return zlib.crc32(bytes(str(history[-6:]), "ascii")) % 97 + 1  # never EOS


def fake_execute(out: SchedulerOutput, cached_upto: dict[str, int]) -> dict[str, RequestStepResult]:
    results = {}
    for item in out.scheduled:
        req = item.request
        # The fake "computes" KV for the scheduled range; it must start where the cache ends.
        assert item.num_computed_tokens == cached_upto.get(req.request_id, item.num_computed_tokens)
        cached_upto[req.request_id] = item.num_computed_tokens + item.num_new_tokens
        assert len(item.block_ids) * 16 >= item.num_computed_tokens + item.num_scheduled_tokens
        if item.needs_sample:
            results[req.request_id] = RequestStepResult(req.request_id, [next_token(req.token_ids)])
    return results


def run_to_completion(requests: list[Request], num_blocks: int, budget: int = 64, max_seqs: int = 16,
                      arrivals: dict[int, int] | None = None, max_steps: int = 5000) -> tuple[dict[str, list[int]], Scheduler]:
    kv = KVCacheManager(num_blocks, 16, enable_prefix_caching=True)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=budget, max_num_seqs=max_seqs), kv)
    arrivals = arrivals or {}
    pending = list(enumerate(requests))
    cached_upto: dict[str, int] = {}
    done: dict[str, list[int]] = {}
    for step in range(max_steps):
        for i, req in list(pending):
            if arrivals.get(i, 0) <= step:
                sched.add_request(req)
                pending.remove((i, req))
        out = sched.schedule()
        for rid in list(cached_upto):
            if sched.requests.get(rid) is None or sched.requests[rid].num_computed_tokens == 0:
                cached_upto.pop(rid)
        for req, _ in sched.update_from_output(out, fake_execute(out, cached_upto)):
            if req.status.finished:
                done[req.request_id] = req.output_token_ids
        kv.check_integrity()
        if not pending and sched.num_unfinished == 0:
            break
    else:
        raise AssertionError("scheduler did not finish: deadlock or starvation")
    assert kv.num_used_blocks == 0
    for req in requests:  # includes requests the scheduler itself had to finish
        done.setdefault(req.request_id, req.output_token_ids)
    return done, sched


def make_requests(num: int, seed: int = 0, max_tokens: int = 20, shared_prefix: int = 0) -> list[Request]:
    rng = random.Random(seed)
    prefix = [rng.randint(1, 99) for _ in range(shared_prefix)]
    reqs = []
    for i in range(num):
        prompt = prefix + [rng.randint(1, 99) for _ in range(rng.randint(1, 60))]
        reqs.append(Request(f"r{i}", prompt, SamplingParams(temperature=0, max_tokens=max_tokens),
                            frozenset([EOS]), max_model_len=512))
    return reqs


def expected_outputs(requests: list[Request]) -> dict[str, list[int]]:
    result = {}
    for req in requests:
        history = list(req.prompt_token_ids)
        for _ in range(req.params.max_tokens or 0):
            history.append(next_token(history))
        result[req.request_id] = history[len(req.prompt_token_ids):]
    return result


def test_plenty_of_blocks_matches_reference() -> None:
    reqs = make_requests(12)
    done, sched = run_to_completion(reqs, num_blocks=200)
    assert done == expected_outputs(make_requests(12))
    assert sched.num_preemptions == 0


def test_chunked_prefill_with_tiny_budget() -> None:
    done, _ = run_to_completion(make_requests(6, seed=1), num_blocks=200, budget=5)
    assert done == expected_outputs(make_requests(6, seed=1))


def test_preemption_keeps_outputs_and_never_deadlocks() -> None:
    reqs = make_requests(16, seed=2, max_tokens=40)
    done, sched = run_to_completion(reqs, num_blocks=14, budget=64)
    assert sched.num_preemptions > 0
    assert done == expected_outputs(make_requests(16, seed=2, max_tokens=40))


def test_staggered_arrivals_and_prefix_hits() -> None:
    reqs = make_requests(10, seed=3, shared_prefix=40)
    done, sched = run_to_completion(reqs, num_blocks=100, arrivals={i: 3 * i for i in range(10)})
    assert done == expected_outputs(make_requests(10, seed=3, shared_prefix=40))
    assert sched.kv.prefix_cache_stats.hits >= 9 * 32  # two full shared blocks for each later request


def test_max_num_seqs_is_respected() -> None:
    kv = KVCacheManager(200, 16)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=1000, max_num_seqs=3), kv)
    for req in make_requests(8):
        sched.add_request(req)
    out = sched.schedule()
    assert len(out.scheduled) == 3
    assert len(sched.waiting) == 5


def test_abort_frees_blocks_at_once() -> None:
    kv = KVCacheManager(50, 16)
    sched = Scheduler(SchedulerConfig(), kv)
    reqs = make_requests(3)
    for req in reqs:
        sched.add_request(req)
    sched.schedule()
    assert kv.num_used_blocks > 0
    for req in reqs:
        sched.finish_request(req.request_id, RequestStatus.FINISHED_ABORTED)
    assert kv.num_used_blocks == 0
    kv.check_integrity()
    assert sched.num_unfinished == 0


def test_request_that_cannot_fit_alone_is_finished_not_retried() -> None:
    req = Request("big", list(range(1, 40)), SamplingParams(temperature=0, max_tokens=100), frozenset([EOS]), 512)
    done, _ = run_to_completion([req], num_blocks=3)
    assert len(done["big"]) == 3 * 16 - 39 + 1  # generated until the pool was full
    assert req.status == RequestStatus.FINISHED_LENGTH


def test_duplicate_request_id_rejected() -> None:
    sched = Scheduler(SchedulerConfig(), KVCacheManager(10, 16))
    req = make_requests(1)[0]
    sched.add_request(req)
    with pytest.raises(ValueError):
        sched.add_request(req)
