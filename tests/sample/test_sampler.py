from __future__ import annotations

import math
import random

import pytest
import torch

from specserve.sample import (
    Sampler,
    SamplingState,
    apply_penalties_and_scaling,
    make_generator,
    probs_from_logits,
)
from specserve.sampling_params import SamplingParams

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
    ),
]


def state(
    prompt: list[int] | None = None, output: list[int] | None = None, device: str = "cpu", **kw: object
) -> SamplingState:
    params = SamplingParams(**kw)  # type: ignore[arg-type]
    return SamplingState(params, prompt or [], output or [], make_generator(params.seed, device))


def kept(probs: torch.Tensor) -> list[int]:
    return torch.nonzero(probs > 0).flatten().tolist()


def chi2_sf(x: float, k: int) -> float:
    """Survival function of the chi-square distribution with k degrees of freedom (closed forms)."""
    if k % 2 == 0:
        term, total = 1.0, 1.0
        for i in range(1, k // 2):
            term *= (x / 2) / i
            total += term
        return math.exp(-x / 2) * total
    total = math.erfc(math.sqrt(x / 2))
    term = math.sqrt(2 * x / math.pi) * math.exp(-x / 2)
    for i in range(1, (k - 1) // 2 + 1):
        total += term
        term *= x / (2 * i + 1)
    return total


def test_chi2_sf_known_values() -> None:
    # 95th percentiles from standard tables.
    for x, k in [(3.841, 1), (5.991, 2), (7.815, 3), (9.488, 4), (11.070, 5), (14.067, 7)]:
        assert chi2_sf(x, k) == pytest.approx(0.05, abs=2e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax(device: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 100, device=device)
    out = Sampler().sample(logits, [state(temperature=0.0) for _ in range(5)])
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.token_ids_tensor.tolist() == out.token_ids


def test_top_k_1_equals_greedy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(8, 200)
    states = [state(top_k=1, temperature=1.3, seed=i) for i in range(8)]
    assert Sampler().sample(logits, states).token_ids == logits.argmax(-1).tolist()


def test_mixed_greedy_and_random_rows() -> None:
    torch.manual_seed(2)
    logits = torch.randn(4, 50)
    states = [state(temperature=0.0), state(top_k=1), state(temperature=0.0), state(min_p=1.0)]
    assert Sampler().sample(logits, states).token_ids == logits.argmax(-1).tolist()


def test_top_k_mask() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0, 0.0], [1.0, 5.0, 3.0, 4.0, 2.0, 0.0]])
    probs = probs_from_logits(logits, [state(top_k=3), state(top_k=-1)])
    assert kept(probs[0]) == [1, 2, 3]
    expected = torch.softmax(torch.tensor([5.0, 3.0, 4.0]), -1)
    torch.testing.assert_close(probs[0, [1, 2, 3]], expected)
    torch.testing.assert_close(probs[1], torch.softmax(logits[1], -1))  # disabled row untouched


def test_top_k_keeps_ties_at_the_boundary() -> None:
    probs = probs_from_logits(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), [state(top_k=1)])
    assert kept(probs[0]) == [1, 2]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.35, [0]), (0.5, [0, 1]), (0.85, [0, 1, 2]), (0.95, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_mask(top_p: float, expected: list[int]) -> None:
    base = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = base[[2, 0, 3, 1]].log()[None]  # shuffled so the sort matters
    order = [1, 3, 0, 2]  # positions of 0.4, 0.3, 0.2, 0.1
    probs = probs_from_logits(logits, [state(top_p=top_p)])
    assert kept(probs[0]) == sorted(order[i] for i in expected)
    keep = base[expected]
    torch.testing.assert_close(probs[0, [order[i] for i in expected]], keep / keep.sum())


def test_top_p_after_top_k() -> None:
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top-k=2 renormalizes to [4/7, 3/7]; top_p=0.5 then keeps only the first.
    assert kept(probs_from_logits(logits, [state(top_k=2, top_p=0.5)])[0]) == [0]
    assert kept(probs_from_logits(logits, [state(top_k=3, top_p=0.6)])[0]) == [0, 1]


@pytest.mark.parametrize(
    ("min_p", "expected"), [(0.0, [0, 1, 2, 3]), (0.2, [0, 1, 2]), (0.5, [0, 1]), (1.0, [0])]
)
def test_min_p_mask(min_p: float, expected: list[int]) -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert kept(probs_from_logits(logits, [state(min_p=min_p)])[0]) == expected


def test_greedy_rows_are_one_hot() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3], [0.1, 2.0, 0.3]])
    probs = probs_from_logits(logits, [state(temperature=0.0), state()])
    assert probs[0].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(probs[1], torch.softmax(logits[1], -1))


def reference_penalties(logits: torch.Tensor, s: SamplingState, eos: list[int]) -> torch.Tensor:
    out = logits.clone().double()
    p = s.params
    for t in set(s.prompt_token_ids) | set(s.output_token_ids):
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t in set(s.output_token_ids):
        out[t] -= p.frequency_penalty * s.output_token_ids.count(t) + p.presence_penalty
    if len(s.output_token_ids) < p.min_tokens:
        for t in list(p.stop_token_ids or []) + ([] if p.ignore_eos else eos):
            out[t] = float("-inf")
    if not p.greedy:
        out /= p.temperature
    return out.float()


@pytest.mark.parametrize("device", DEVICES)
def test_penalties_match_reference(device: str) -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    vocab, eos = 40, [0, 39]
    states = []
    for i in range(12):
        states.append(
            state(
                prompt=[rng.randrange(vocab) for _ in range(rng.randrange(0, 15))],
                output=[rng.randrange(vocab) for _ in range(rng.randrange(0, 10))],
                repetition_penalty=rng.choice([1.0, 1.3, 0.7]),
                presence_penalty=rng.choice([0.0, 0.5, -1.0]),
                frequency_penalty=rng.choice([0.0, 0.4, -0.3]),
                temperature=rng.choice([0.0, 0.5, 1.0, 1.7]),
                min_tokens=rng.choice([0, 5, 12]),
                stop_token_ids=rng.choice([[], [3, 7]]),
                ignore_eos=rng.random() < 0.3,
                max_tokens=None,
            )
        )
    logits = torch.randn(len(states), vocab) * 3
    before = logits.clone()
    got = apply_penalties_and_scaling(logits.to(device), states, eos).cpu()
    assert torch.equal(logits, before), "input logits must not be modified"
    for i, s in enumerate(states):
        torch.testing.assert_close(got[i], reference_penalties(logits[i], s, eos), msg=f"row {i}")


def test_no_penalty_fast_path_is_identity() -> None:
    logits = torch.randn(3, 10)
    out = apply_penalties_and_scaling(logits, [state(), state(temperature=0.0), state(top_k=3)], [0])
    assert torch.equal(out, logits)


def test_min_tokens_blocks_eos_in_sampling() -> None:
    logits = torch.tensor([[10.0, 0.0, 0.0, 0.0]])
    s = state(temperature=0.0, min_tokens=2, output=[1])
    assert Sampler().sample(logits, [s], eos_token_ids=[0]).token_ids != [0]
    s.output_token_ids.append(2)
    assert Sampler().sample(logits, [s], eos_token_ids=[0]).token_ids == [0]


def run_seeded(batch: list[SamplingState], logits: torch.Tensor, steps: int) -> list[list[int]]:
    sampler = Sampler()
    return [sampler.sample(logits, batch).token_ids for _ in range(steps)]


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_rows_independent_of_batch(device: str) -> None:
    torch.manual_seed(0)
    vocab = 500
    row = torch.randn(vocab)

    def batch_of(others: int, position: int) -> tuple[list[SamplingState], torch.Tensor]:
        states = [state(seed=None if j % 2 else 1000 + j, top_p=0.9, device=device) for j in range(others)]
        states.insert(position, state(seed=42, temperature=1.5, device=device))
        logits = torch.randn(others + 1, vocab)
        logits[position] = row
        return states, logits.to(device)

    alone_states, alone_logits = batch_of(0, 0)
    alone = [t[0] for t in run_seeded(alone_states, alone_logits, 20)]
    for others, pos in [(3, 1), (6, 6), (2, 0)]:
        states, logits = batch_of(others, pos)
        assert [t[pos] for t in run_seeded(states, logits, 20)] == alone
    other_seed = [state(seed=43, temperature=1.5, device=device)]
    assert [t[0] for t in run_seeded(other_seed, row[None].to(device), 20)] != alone


def expected_distribution(logits: list[float], temperature: float, top_p: float) -> list[float]:
    weights = [math.exp(x / temperature) for x in logits]
    probs = [w / sum(weights) for w in weights]
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    keep, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        keep.append(i)
        mass += probs[i]
    total = sum(probs[i] for i in keep)
    return [probs[i] / total if i in keep else 0.0 for i in range(len(probs))]


def chi2_check(counts: list[int], expected: list[float]) -> None:
    n = sum(counts)
    stat, dof = 0.0, -1
    for c, e in zip(counts, expected):
        if e == 0.0:
            assert c == 0, "a truncated token was sampled"
            continue
        stat += (c - n * e) ** 2 / (n * e)
        dof += 1
    assert chi2_sf(stat, dof) > 1e-3, (counts, [round(n * e) for e in expected], stat)


@pytest.mark.parametrize("device", DEVICES)
def test_sampled_frequencies_match_distribution(device: str) -> None:
    torch.manual_seed(1234)
    raw = [1.0, 0.2, -0.5, 2.0, 0.7, -1.5, 0.0, 1.4]
    temperature, top_p, n = 0.7, 0.9, 20_000
    states = [state(temperature=temperature, top_p=top_p) for _ in range(n)]
    out = Sampler().sample(torch.tensor([raw], device=device).expand(n, -1), states)
    counts = torch.bincount(out.token_ids_tensor, minlength=len(raw)).tolist()
    expected = expected_distribution(raw, temperature, top_p)
    assert expected.count(0.0) >= 2  # the test must exercise truncation
    chi2_check(counts, expected)


def test_seeded_generator_frequencies_match_distribution() -> None:
    raw = [0.5, 1.5, -0.2, 1.0, 0.0]
    n = 4000
    gen = make_generator(7, "cpu")
    # Rows sharing one generator draw successive, independent noise.
    states = [SamplingState(SamplingParams(temperature=1.0), [], [], gen) for _ in range(n)]
    out = Sampler().sample(torch.tensor([raw]).expand(n, -1), states)
    counts = torch.bincount(out.token_ids_tensor, minlength=len(raw)).tolist()
    chi2_check(counts, expected_distribution(raw, 1.0, 1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_logprobs_are_raw_log_softmax(device: str) -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, 30) * 2
    states = [
        state(temperature=0.0, logprobs=5),
        state(temperature=0.5, repetition_penalty=1.5, output=[1, 2], logprobs=0),
        state(top_k=3, logprobs=None),
        state(top_k=4, seed=0, logprobs=20, device=device),
    ]
    out = Sampler().sample(logits.to(device), states)
    raw = torch.log_softmax(logits, -1)
    assert out.logprobs[2] is None
    for i in (0, 1, 3):
        lp = out.logprobs[i]
        assert lp is not None
        tok = out.token_ids[i]
        assert lp.token_id == tok
        assert lp.logprob == pytest.approx(raw[i, tok].item(), abs=1e-5)
        assert lp.rank == 1 + int((raw[i] > raw[i, tok]).sum())
        n = states[i].params.logprobs or 0
        top = raw[i].topk(n)
        assert lp.top_token_ids == top.indices.tolist()
        assert lp.top_logprobs == pytest.approx(top.values.tolist(), abs=1e-5)
    assert out.logprobs[0] is not None and out.logprobs[0].rank == 1
    assert out.logprobs[1] is not None and out.logprobs[1].top_token_ids == []
