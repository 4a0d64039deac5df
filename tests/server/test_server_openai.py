"""The server through the official `openai` client: chat and completions, streaming and not."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from server_harness import MODEL_NAME, RunningServer

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=60, max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def greedy_chat(client: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0,
                                          logprobs=True, top_logprobs=2)


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]


def test_chat(greedy_chat: openai.types.chat.ChatCompletion) -> None:
    choice = greedy_chat.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = greedy_chat.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0
    # logprobs: one entry per generated token, 2 alternatives each, the greedy token ranked first.
    content = choice.logprobs.content
    assert len(content) == usage.completion_tokens
    assert "".join(entry.token for entry in content).startswith(choice.message.content)
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-5)


def test_chat_stream_matches(client: openai.OpenAI, greedy_chat: openai.types.chat.ChatCompletion) -> None:
    stream = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_completion_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == greedy_chat.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    # The non-standard summary the chat page reads; speculation is off here.
    assert finals[0].model_extra["specserve"]["mean_accepted_tokens_per_step"] is None
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == greedy_chat.usage.completion_tokens
    # The prompt was seen before, so its full blocks come from the prefix cache.
    assert usage.prompt_tokens_details.cached_tokens > 0


def test_completion_stream_and_stop(client: openai.OpenAI) -> None:
    prompt = "The capital of France is Paris. The capital of Germany is"
    full = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion" and text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == text
    # Stop at the second word of the greedy text: the output ends just before it, finish_reason "stop".
    words = text.split()
    if len(words) < 2:
        pytest.skip(f"greedy text too short to pick a stop string: {text!r}")
    stop = " " + words[1]
    cut = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=6, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[:text.index(stop)]


def test_seed_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        out = client.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=6,
                                        temperature=0.8, seed=seed, n=2)
        return [c.text for c in sorted(out.choices, key=lambda c: c.index)]

    first = sample(1234)
    assert sample(1234) == first
    assert len(first) == 2


def test_completion_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL_NAME, prompt=[[1, 2, 3, 4], [5, 6, 7]], max_tokens=3,
                                    temperature=0, logprobs=2)
    assert sorted(c.index for c in out.choices) == [0, 1]
    for choice in out.choices:
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 3
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert logprob <= 0 and top[token] == pytest.approx(logprob) and 2 <= len(top) <= 3
    assert out.usage.prompt_tokens == 7


def test_metrics_after_requests(server: RunningServer) -> None:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for name in ("specserve_time_to_first_token_seconds_count", "specserve_inter_token_latency_seconds_count",
                 "specserve_e2e_request_latency_seconds_count", "specserve_kv_blocks_used",
                 "specserve_num_requests_running", "specserve_num_requests_waiting",
                 "specserve_prefix_cache_hit_rate"):
        assert name in text
    assert 'specserve_http_requests_total{path="/v1/chat/completions",status="200"}' in text
    assert server.wait_idle()["kv_blocks_in_use"] == 0


def test_stream_several_prompts_and_choices(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=["Hello", "The sky is"], n=2, max_tokens=4,
                                            temperature=0.7, seed=7, stream=True))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1, 2, 3]  # choice index = prompt index * n + sequence index
    chat_chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, n=2, max_tokens=4,
                                                      temperature=0.7, seed=7, stream=True))
    roles = [c.choices[0].index for c in chat_chunks if c.choices and c.choices[0].delta.role]
    finished = sorted(c.choices[0].index for c in chat_chunks if c.choices and c.choices[0].finish_reason)
    assert roles == [0, 1] and finished == [0, 1]
