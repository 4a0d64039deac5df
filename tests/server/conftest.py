"""Fixtures for the server tests: the shared weights, a default server per module, an HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from server_harness import RunningServer, start_server

from specserve.engine.model_setup import ModelBundle, load_bundle


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # On a machine shared with other jobs, two intra-op threads that wait for each other made steps
    # ~25x slower than one thread (measured on the 2-core dev box). Restored for other folders' tests.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bundle() -> ModelBundle:
    return load_bundle(None, "float32", "cpu")


@pytest.fixture(scope="module")
def server(bundle: ModelBundle) -> Iterator[RunningServer]:
    running = start_server(bundle)
    yield running
    running.stop()


@pytest.fixture()
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
