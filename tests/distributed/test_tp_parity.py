"""Logits of a 2-rank gloo group against the single-process model on the same random weights: Llama (GQA,
untied), Qwen2 (q/k/v biases, tied), GPTBigCode multi-query (replicated KV head) and multi-head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp
from tp_helpers import free_port, parity_child, run_steps

from specserve.model.loader import load_model

WORLD_SIZE = 2


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def test_two_rank_logits_match_single_process(tp_llama_dir: Path, tp_qwen2_dir: Path, tp_bigcode_mqa_dir: Path,
                                              tp_bigcode_mha_dir: Path, tmp_path: Path) -> None:
    dirs = [tp_llama_dir, tp_qwen2_dir, tp_bigcode_mqa_dir, tp_bigcode_mha_dir]
    mp.start_processes(parity_child, args=(WORLD_SIZE, free_port(), [str(d) for d in dirs], str(tmp_path)),
                       nprocs=WORLD_SIZE, join=True, start_method="spawn")
    for i, model_dir in enumerate(dirs):
        model, _ = load_model(model_dir, torch.float32, torch.device("cpu"))
        want = run_steps(model)
        got = torch.load(tmp_path / f"logits{i}.pt")
        assert got.shape == want.shape
        error = relative_error(got, want)
        assert error < 1e-4, f"{model_dir.name}: relative error {error:.2e}"
