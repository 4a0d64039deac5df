from __future__ import annotations

import pytest

from specserve.sampling_params import SamplingParams

BAD_VALUES = [
    {"n": 0},
    {"n": 1.5},
    {"temperature": -0.1},
    {"temperature": float("nan")},
    {"top_p": 0.0},
    {"top_p": 1.5},
    {"top_k": -2},
    {"top_k": 2.5},
    {"top_k": True},
    {"min_p": -0.1},
    {"min_p": 1.1},
    {"repetition_penalty": 0.0},
    {"repetition_penalty": -1.0},
    {"presence_penalty": 2.5},
    {"presence_penalty": -2.5},
    {"frequency_penalty": 2.1},
    {"frequency_penalty": -3.0},
    {"max_tokens": 0},
    {"max_tokens": -5},
    {"min_tokens": -1},
    {"min_tokens": 10, "max_tokens": 5},
    {"logprobs": -1},
    {"logprobs": 21},
    {"stop": ""},
    {"stop": ["ok", ""]},
    {"stop_token_ids": [-1]},
    {"seed": "abc"},
]


@pytest.mark.parametrize("kwargs", BAD_VALUES, ids=lambda kw: ",".join(f"{k}={v!r}" for k, v in kw.items()))
def test_bad_values_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_valid_and_normalized() -> None:
    p = SamplingParams()
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.greedy and not p.has_penalties and not p.has_truncation
    assert p.max_tokens == 16


def test_stop_normalized_to_list() -> None:
    assert SamplingParams(stop="END").stop == ["END"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]  # type: ignore[arg-type]
    assert SamplingParams(stop=["x"]).stop_strings == ["x"]


def test_edge_values_accepted() -> None:
    SamplingParams(top_k=-1, top_p=1.0, min_p=1.0, presence_penalty=-2.0, frequency_penalty=2.0)
    SamplingParams(max_tokens=None, min_tokens=100, logprobs=0)
    SamplingParams(logprobs=20, min_tokens=5, max_tokens=5, seed=0)


def test_greedy_threshold() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-3).greedy
