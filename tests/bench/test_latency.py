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


def test_latency_takes_a_file_of_rewrite_prompts(run_bench, tiny_llama_dir, tmp_path):
    prompts = tmp_path / "rewrite.jsonl"
    prompts.write_text('{"prompt": "Fix the typos: teh cat sat on teh mat."}\n'
                       '{"prompt": "Fix the typos: recieve the pakcage tomorow."}\n')
    result = run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off,ngram", "--max-tokens", "4",
                       "--num-prompts", "1", "--repeats", "2", "--rewrite-prompts", str(prompts),
                       "--kv-cache-memory", "8MiB", "--bandwidth-mib", "8")
    rewrite = [r for r in result["rows"] if r["prompts"] == "rewrite"]
    assert [r["requests"] for r in rewrite] == [4, 4]  # 2 prompts, twice each
    assert result["config"]["rewrite_prompts"] == str(prompts)


def test_latency_rejects_a_missing_rewrite_file_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "specserve.cli", "bench", "latency", "--rewrite-prompts",
                             str(tmp_path / "absent.jsonl"), "--configs", "off", "--max-tokens", "2",
                             "--num-prompts", "1", "--bandwidth-mib", "8"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("specserve: error: cannot read --rewrite-prompts")


def test_latency_takes_chat_prompts_from_a_file_and_stops_at_eos(run_bench, tiny_llama_dir, bench_mlp_dir, tmp_path):
    prompts = tmp_path / "chat.jsonl"
    prompts.write_text('{"prompt": "Where is my parcel?"}\n'
                       '{"messages": [{"role": "user", "content": "Cancel my order, please."}]}\n'
                       '{"prompt": "How do I reset my password?"}\n')
    result = run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off,mlp", "--max-tokens", "6",
                       "--speculator", str(bench_mlp_dir), "--num-prompts", "2", "--chat-prompts", str(prompts),
                       "--stop-at-eos", "--kv-cache-memory", "8MiB", "--bandwidth-mib", "8")
    chat = [r for r in result["rows"] if r["prompts"] == "chat"]
    assert [r["requests"] for r in chat] == [2, 2]  # the first 2 of the file's 3
    assert result["config"]["chat_prompts"] == str(prompts) and result["config"]["ignore_eos"] is False
    assert len(result["config"]["prompt_tokens"]["chat"]) == 2
    for kind in ("chat", "rewrite"):
        off, mlp = (next(r for r in result["rows"] if r["prompts"] == kind and r["config"] == c) for c in ("off", "mlp"))
        assert off["x_off"] == 1.0
        assert mlp["x_off"] == mlp["decode_tok_s"] / off["decode_tok_s"]


def test_latency_takes_at_most_eight_built_in_chat_prompts(run_bench, tiny_llama_dir) -> None:
    import pytest

    with pytest.raises(ValueError, match="between 1 and 8"):
        run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off", "--num-prompts", "9",
                  "--max-tokens", "2", "--bandwidth-mib", "8")
