from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_machine

pytest.importorskip("matplotlib")


def test_serve_against_a_launched_server_draws_the_curve(run_bench, tiny_llama_dir, tmp_path: Path):
    png = tmp_path / "serve.png"
    result = run_bench("serve", "--launch", "--model", str(tiny_llama_dir), "--kv-cache-memory", "8MiB",
                       "--label", "tiny", "--concurrency", "1,2", "--rate", "inf", "--num-requests", "3",
                       "--max-tokens", "8", "--warmup", "1", "--no-progress", "--plot", str(png))
    assert_machine(result)
    rows = result["rows"]
    assert [(r["mode"], r["offered"]) for r in rows] == [("rate", float("inf")), ("concurrency", 1),
                                                          ("concurrency", 2)]
    for row in rows:
        assert row["label"] == "tiny"
        assert (row["completed"], row["failed"], row["unfinished"]) == (3, 0, 0)
        assert row["output_tok_s"] == pytest.approx(3 * 8 / row["seconds"])
        assert 0 < row["ttft_ms_p50"] <= row["ttft_ms_p99"] and 0 < row["tpot_ms_p50"]
        assert 0 < row["e2e_s_p50"] <= row["e2e_s_p99"]
    assert png.stat().st_size > 10_000

    merged_png = tmp_path / "merged.png"
    other = dict(result, rows=[dict(r, label="other") for r in rows])
    other_path = tmp_path / "other.json"
    other_path.write_text(__import__("json").dumps(other))
    merged = run_bench("plot", str(tmp_path / "serve.json"), str(other_path), "--out", str(merged_png))
    assert {r["curve"] for r in merged["rows"]} == {"tiny (rate)", "tiny (concurrency)", "other (rate)",
                                                     "other (concurrency)"}
    assert merged_png.stat().st_size > 10_000


def test_serve_stops_at_its_deadline_and_the_server_frees_everything(run_bench, tiny_llama_dir):
    result = run_bench("serve", "--launch", "--model", str(tiny_llama_dir), "--kv-cache-memory", "8MiB",
                       "--concurrency", "2", "--num-requests", "50", "--max-tokens", "800", "--duration", "0.3",
                       "--warmup", "0", "--no-progress")
    row = result["rows"][0]
    assert row["unfinished"] >= 1 and row["failed"] == 0
    assert row["completed"] + row["unfinished"] < 50
    # The conftest checks after the test that the launched engine holds no KV block.
