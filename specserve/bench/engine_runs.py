"""Timed runs of specserve's engine: one request at a time, and N requests at once."""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

from specserve.engine.engine import LLMEngine
from specserve.sampling_params import SamplingParams

_ids = itertools.count()


@dataclass
class SingleRun:
    ttft_s: float
    e2e_s: float
    num_tokens: int
    itl_s: list[float]

    @property
    def decode_tok_s(self) -> float:
        decode_time = self.e2e_s - self.ttft_s
        return (self.num_tokens - 1) / decode_time if decode_time > 0 else float("nan")


def run_single(engine: LLMEngine, prompt_ids: list[int], max_tokens: int, ignore_eos: bool = True) -> SingleRun:
    """One request alone; greedy, exactly max_tokens tokens (EOS ignored), or up to its EOS."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    request_id = f"bench-{next(_ids)}"
    start = time.perf_counter()
    engine.add_request(request_id, {"prompt_token_ids": prompt_ids}, params)
    first = None
    last = start
    gaps: list[float] = []
    num = 0
    while True:
        for out in engine.step():
            now = time.perf_counter()
            new = len(out.outputs[0].delta_token_ids)
            if new:
                if first is None:
                    first = now
                else:
                    gaps.extend([(now - last) / new] * new)
                last = now
            num = len(out.outputs[0].token_ids)
            if out.finished:
                assert first is not None
                return SingleRun(first - start, now - start, num, gaps)


def run_concurrent(engine: LLMEngine, prompts: list[list[int]], max_tokens: int) -> tuple[float, int]:
    """All prompts submitted at once; returns (seconds, generated tokens)."""
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    for ids in prompts:
        engine.add_request(f"bench-{next(_ids)}", {"prompt_token_ids": ids}, params)
    total = 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                total += len(out.outputs[0].token_ids)
    return time.perf_counter() - start, total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
