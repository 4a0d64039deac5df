"""64 concurrent streaming chats: greedy text equals the offline API's, and every KV block comes back.

Bounded: 8 distinct questions asked 8 times each, 16 tokens per answer, a deadline on the whole run.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import httpx
import openai
import pytest
from server_harness import MODEL_NAME, RunningServer, start_server

from specserve.engine.llm import LLM
from specserve.engine.model_setup import ModelBundle
from specserve.sampling_params import SamplingParams

pytestmark = pytest.mark.slow

NUM_CLIENTS = 64
MAX_TOKENS = 16
QUESTIONS = ["What is the capital of France?", "Name a primary color.", "How many legs does a spider have?",
             "What is 2 plus 2?", "Say hello in Spanish.", "What do bees make?",
             "Which planet is closest to the sun?", "What is the opposite of cold?"]
ENGINE_ARGS = {"kv_cache_memory": "256MiB", "max_num_seqs": NUM_CLIENTS}


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def expected(bundle: ModelBundle) -> dict[str, str]:
    """Greedy answers from the offline API, computed before the server's engine exists."""
    llm = LLM(bundle=bundle, **ENGINE_ARGS)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outputs = llm.chat([conversation(q) for q in QUESTIONS], greedy)
    return {q: out.outputs[0].text for q, out in zip(QUESTIONS, outputs)}


@pytest.fixture(scope="module")
def server(bundle: ModelBundle, expected: dict[str, str]) -> Iterator[RunningServer]:
    running = start_server(bundle, **ENGINE_ARGS)
    yield running
    running.stop()


async def ask(client: openai.AsyncOpenAI, question: str, leave_after_first_token: bool) -> str | None:
    stream = await client.chat.completions.create(model=MODEL_NAME, messages=conversation(question),
                                                  max_tokens=MAX_TOKENS, temperature=0, stream=True)
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            if leave_after_first_token:
                await stream.close()  # drops the connection mid-stream
                return None
    return text


async def run_clients(url: str, leave: set[int]) -> list[str | None]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="-", timeout=120, max_retries=0) as client:
        jobs = [ask(client, QUESTIONS[i % len(QUESTIONS)], i in leave) for i in range(NUM_CLIENTS)]
        return await asyncio.wait_for(asyncio.gather(*jobs), timeout=150)


def kv_blocks_used(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(r"^specserve_kv_blocks_used (\S+)$", text, re.MULTILINE)
    assert match, "kv_blocks_used missing from /metrics"
    return float(match.group(1))


def check(server: RunningServer, expected: dict[str, str], leave: set[int]) -> None:
    answers = asyncio.run(run_clients(server.url, leave))
    for i, answer in enumerate(answers):
        if i in leave:
            assert answer is None
        else:
            assert answer == expected[QUESTIONS[i % len(QUESTIONS)]], f"client {i}"
    stats = server.wait_idle()
    assert not server.state.in_flight
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert kv_blocks_used(server.url) == 0


def test_64_concurrent_streams_match_offline(server: RunningServer, expected: dict[str, str]) -> None:
    check(server, expected, leave=set())


def test_a_third_disconnect_mid_stream(server: RunningServer, expected: dict[str, str]) -> None:
    check(server, expected, leave={i for i in range(NUM_CLIENTS) if i % 3 == 0})
