"""eval-speculator on a tiny model: same outputs with and without speculation, figures present."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from specserve.cli import build_parser
from specserve.train.eval import evaluate_speculator, print_report


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_eval_reports_acceptance_and_identical_outputs(tiny_llama_dir: Path, tmp_path: Path, dtype: str) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Say hi.", "Count to five."]))
    args = build_parser().parse_args(["eval-speculator", "--model", str(tiny_llama_dir), "--speculator", "ngram",
                                      "--prompts", str(prompts), "--max-tokens", "16", "--threads", "1",
                                      "--dtype", dtype])
    assert isinstance(args, argparse.Namespace)
    report = evaluate_speculator(args)
    run = report["runs"]["spec_c1"]
    assert run["outputs_identical"] and report["generated_tokens"] > 0
    assert "spec_accepted_length_histogram" in run and report["plain_tok_s"] > 0
    assert "identical outputs: True" in print_report(report) and report["dtype"] == dtype
