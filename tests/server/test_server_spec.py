"""With a speculator (n-gram: needs no checkpoint) the reply reports its acceptance, and /metrics too."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from server_harness import MODEL_NAME, RunningServer, start_server

from specserve.engine.model_setup import ModelBundle

pytestmark = pytest.mark.slow

# Text that repeats itself, so n-gram drafts get accepted.
ECHO = [{"role": "user", "content": "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat"}]


@pytest.fixture(scope="module")
def server(bundle: ModelBundle) -> Iterator[RunningServer]:
    running = start_server(bundle, speculator="ngram")
    yield running
    running.stop()


def test_reply_and_metrics_report_acceptance(http: httpx.Client) -> None:
    body = {"model": MODEL_NAME, "messages": ECHO, "max_tokens": 24, "temperature": 0}
    info = http.post("/v1/chat/completions", json=body).json()["specserve"]
    assert info["speculator"] == "ngram"
    if not info["spec_steps"]:
        pytest.skip("the speculation policy chose not to speculate on this reply")
    assert info["mean_accepted_tokens_per_step"] >= 1.0
    assert 0.0 <= info["acceptance_rate"] <= 1.0
    metrics = http.get("/metrics").text
    assert "specserve_spec_acceptance_rate " in metrics
    assert "specserve_spec_mean_accepted_tokens_per_step " in metrics
