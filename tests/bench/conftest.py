"""Benchmark smoke tests: every `specserve bench` subcommand, tiny settings, on the tiny random model.

They check that each benchmark runs end to end and writes the JSON the report renders, with sane values;
the figures themselves mean nothing on a random model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from specserve.spec.checkpoint import save_mlp_speculator
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def bench_mlp_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle) -> Path:
    """A random MLP speculator for the tiny model: it always proposes, so drafts get verified."""
    arch = tiny_bundle.arch
    config = MLPSpeculatorConfig(emb_dim=arch.hidden_size, vocab_size=arch.vocab_size, n_predict=3,
                                 inner_dim=32, top_k_tokens_per_head=(2, 1, 1), n_candidates=2)
    model = MLPSpeculator(config)
    model.reset_parameters(torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("bench-mlp")
    save_mlp_speculator(model, out)
    return out


@pytest.fixture()
def run_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Any]]:
    """Run `specserve bench NAME ARGS --threads 1 --json FILE` in this process; return the JSON."""
    from specserve.cli import main

    monkeypatch.setenv("SPECSERVE_DEBUG", "1")  # tracebacks instead of one-line errors

    def run(*argv: str, json_path: Path | None = None) -> dict[str, Any]:
        path = json_path or tmp_path / f"{argv[0]}.json"
        assert main(["bench", *argv, "--threads", "1", "--json", str(path)]) == 0
        return dict(json.loads(path.read_text()))

    return run


def assert_machine(result: dict[str, Any]) -> None:
    machine = result["machine"]
    assert machine["torch_threads"] == 1 and machine["torch_version"]
    assert isinstance(machine["load_average_1m"], float)
    assert isinstance(result["load_average_1m_end"], float)
    assert result["arguments"]["threads"] == 1
