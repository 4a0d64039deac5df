"""Engine behaviour on a tiny random Llama with the real tokenizer: bad input, stops, n > 1, abort."""

from __future__ import annotations

import pytest

from specserve import LLM, SamplingParams
from specserve.model.loader import ModelLoadError


@pytest.fixture(scope="module")
def llm(tiny_bundle) -> LLM:
    return LLM(bundle=tiny_bundle, max_model_len=256)


@pytest.mark.parametrize("kwargs", [
    dict(max_tokens=0), dict(temperature=-0.5), dict(top_p=0.0), dict(top_p=1.5),
])
def test_bad_sampling_params(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_bad_prompts_are_rejected_and_engine_keeps_serving(llm: LLM) -> None:
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=8)
    engine.add_request("good", "Hello there", params)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("empty", "", params)
    with pytest.raises(ValueError, match="context"):
        engine.add_request("long", {"prompt_token_ids": [5] * 300}, params)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.add_request("oov", {"prompt_token_ids": [10**9]}, params)
    with pytest.raises(ValueError, match="already"):
        engine.add_request("good", "again", params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in outputs] == ["good"]
    assert len(outputs[0].outputs[0].token_ids) == 8


def test_unknown_model_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")):
        LLM(model=str(tmp_path / "nope"))


def test_generate_returns_in_input_order(llm: LLM) -> None:
    prompts = ["one", "two two two two two two two", "three three"]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=5))
    assert [o.prompt for o in outs] == prompts
    alone = [llm.generate(p, SamplingParams(temperature=0, max_tokens=5))[0].outputs[0].token_ids for p in prompts]
    assert [o.outputs[0].token_ids for o in outs] == alone


def test_stop_string_truncates_and_nothing_follows(llm: LLM) -> None:
    base = llm.generate("The weather today", SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    text = base.outputs[0].text
    assert len(text) > 10
    stop = text[5:8]
    out = llm.generate("The weather today", SamplingParams(temperature=0, max_tokens=30, stop=[stop],
                                                            ignore_eos=True))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:text.index(stop)]
    assert stop not in out.text


def test_stop_token_ids_and_max_tokens(llm: LLM) -> None:
    base = llm.generate("Count", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    assert base.finish_reason == "length" and len(base.token_ids) == 12
    target = base.token_ids[4]
    out = llm.generate("Count", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                               stop_token_ids=[target]))[0].outputs[0]
    first = base.token_ids.index(target)
    assert out.token_ids == base.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == target


def test_parallel_sampling_n(llm: LLM) -> None:
    out = llm.generate("Once upon a time", SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 10 for c in out.outputs)
    again = llm.generate("Once upon a time", SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=10))[0]
    assert [c.token_ids for c in out.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1


def test_seed_is_reproducible_regardless_of_batch(llm: LLM) -> None:
    params = SamplingParams(temperature=0.9, seed=1234, max_tokens=12)
    alone = llm.generate("Tell me a story", params)[0].outputs[0].token_ids
    mixed = llm.generate(["Tell me a story", "Other prompt", "And another one"],
                         [params, SamplingParams(temperature=1.0, max_tokens=20), SamplingParams(temperature=0)])
    assert mixed[0].outputs[0].token_ids == alone


def test_abort_frees_blocks_at_once(llm: LLM) -> None:
    engine = llm.engine
    engine.add_request("a", "Abort me please", SamplingParams(temperature=0, max_tokens=50))
    engine.step()
    engine.step()
    assert engine.kv.num_used_blocks > 0
    engine.abort_request("a")
    assert engine.kv.num_used_blocks == 0
    outs = engine.step()
    assert outs and outs[0].finished and outs[0].outputs[0].finish_reason == "abort"


def test_logprobs_reported(llm: LLM) -> None:
    out = llm.generate("Hello", SamplingParams(temperature=0, max_tokens=4, logprobs=3))[0].outputs[0]
    assert len(out.logprobs) == 4
    for token, lp in zip(out.token_ids, out.logprobs):
        assert lp.token_id == token and lp.rank == 1 and len(lp.top_token_ids) == 3
        assert lp.top_token_ids[0] == token


def test_chat_applies_template(llm: LLM) -> None:
    out = llm.chat([{"role": "user", "content": "hi"}], SamplingParams(temperature=0, max_tokens=3))[0]
    assert "<|im_start|>assistant" in llm.tokenizer.decode(out.prompt_token_ids, skip_special_tokens=False)


def test_stats_keys(llm: LLM) -> None:
    stats = llm.stats()
    for key in ("kv_blocks_total", "kv_blocks_in_use", "prefix_cache_hit_tokens", "num_steps",
                "num_generated_tokens"):
        assert key in stats
    assert stats["kv_blocks_in_use"] == 0
