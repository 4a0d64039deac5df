from __future__ import annotations

import pytest
import torch
from conftest import assert_machine

from specserve.bench.roofline import measure_bandwidth, weight_bytes_per_step


def test_compare_adds_prompt_lookup_on_the_rewrite_prompt(run_bench, tiny_llama_dir):
    result = run_bench("compare", "--model", str(tiny_llama_dir), "--max-tokens", "6", "--concurrency", "2",
                       "--repeats", "1")
    assert_machine(result)
    assert [r["system"] for r in result["rows"][:2]] == ["transformers", "specserve"]  # the existing table
    rewrite = result["tables"]["rewrite prompt: single-request decode, with and without prompt lookup"]
    assert [r["system"] for r in rewrite[:4]] == ["specserve", "specserve + ngram", "transformers",
                                                 "transformers + prompt lookup 10"]
    assert all(r["decode_tok_s"] > 0 and r["x_without_lookup"] > 0 for r in rewrite)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        assert any("llama-cpp-python is not installed" in n for n in result["notes"])
    else:
        assert any("llama.cpp needs" in n or "needs a .gguf" in n for n in result["notes"])  # a folder, not a GGUF


def test_roofline_is_weights_over_measured_bandwidth(run_bench, tiny_llama_dir, tiny_bundle):
    result = run_bench("roofline", "--model", str(tiny_llama_dir), "--max-tokens", "6", "--repeats", "1",
                       "--bandwidth-mib", "8")
    extra = result["extra"]
    assert extra["roofline_decode_tok_s"] == pytest.approx(extra["bandwidth_read_gb_s"] * 1e9
                                                           / extra["weight_bytes_per_step"], rel=0.01)
    bound, plain = result["rows"]
    assert bound["of_roofline"] == 1.0 and 0 < plain["of_roofline"] == pytest.approx(
        plain["decode_tok_s"] / bound["decode_tok_s"])


def test_weight_bytes_skip_an_untied_input_embedding(tiny_bundle):
    model = tiny_bundle.model
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    assert weight_bytes_per_step(model) == total - embedding.numel() * embedding.element_size()
    tied = torch.nn.Module()
    tied.emb = torch.nn.Embedding(10, 4)
    tied.get_input_embeddings = lambda: tied.emb
    tied.get_output_embeddings = lambda: tied.emb.weight
    assert weight_bytes_per_step(tied) == 10 * 4 * 4


def test_bandwidth_is_positive_and_copy_counts_both_directions():
    bw = measure_bandwidth(4 << 20, repeats=2)
    assert bw.read_gb_s > 0 and bw.copy_gb_s > 0 and bw.num_bytes == 4 << 20
