from __future__ import annotations

from conftest import assert_machine


def test_latency_reports_every_setup_with_histograms(run_bench, tiny_llama_dir, bench_mlp_dir):
    result = run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off,ngram,mlp,auto",
                       "--speculator", str(bench_mlp_dir), "--max-tokens", "8", "--num-prompts", "2",
                       "--kv-cache-memory", "8MiB", "--bandwidth-mib", "8")
    assert_machine(result)
    rows = result["rows"]
    configs = ["off", "ngram", "mlp", "auto (mlp)"]
    assert [(r["config"], r["prompts"]) for r in rows[:-1]] == [(c, p) for c in configs for p in ("chat", "rewrite")]
    for row in rows[:-1]:
        assert row["requests"] == (2 if row["prompts"] == "chat" else 1)
        assert 0 < row["ttft_ms_p50"] and 0 < row["e2e_s_p50"] < 60
        assert 0 < row["itl_ms_p50"] <= row["itl_ms_p99"]
        assert row["decode_tok_s"] > 0 and row["e2e_tok_s"] > 0
        assert row["x_roofline"] > 0
    roofline = rows[-1]
    assert roofline["config"] == "roofline" and roofline["decode_tok_s"] == result["extra"]["roofline_decode_tok_s"]
    assert result["extra"]["bandwidth_read_gb_s"] > 0 and result["extra"]["weight_bytes_per_step"] > 0
    hist_rows = next(iter(result["tables"].values()))
    assert [r["config"] for r in hist_rows] == ["ngram", "ngram", "mlp", "mlp", "auto (mlp)", "auto (mlp)"]
    for row in hist_rows:
        assert sum(row["histogram"].values()) == row["spec_steps"]
    mlp = [r for r in hist_rows if r["config"] == "mlp"]
    assert all(r["spec_steps"] > 0 and 1.0 <= r["mean_accepted"] <= 4.0 for r in mlp)
    assert all(0 <= int(k) <= 3 for r in mlp for k in r["histogram"])  # at most n_predict accepted
    assert result["notes"] == []


def test_latency_skips_an_absent_speculator_with_a_note(run_bench, tiny_llama_dir):
    result = run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off,mlp,auto",
                       "--speculator", "default", "--max-tokens", "4", "--num-prompts", "1",
                       "--kv-cache-memory", "8MiB", "--bandwidth-mib", "8")
    assert {r["config"] for r in result["rows"]} == {"off", "auto (ngram)", "roofline"}
    assert any("skipped 'mlp'" in note for note in result["notes"])
    assert any("'auto' uses prompt lookup" in note for note in result["notes"])
