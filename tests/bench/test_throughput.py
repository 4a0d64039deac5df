from __future__ import annotations

import pytest
from conftest import assert_machine


def test_throughput_per_concurrency_and_setup(run_bench, tiny_llama_dir, bench_mlp_dir):
    result = run_bench("throughput", "--model", str(tiny_llama_dir), "--configs", "auto,off,on",
                       "--speculator", str(bench_mlp_dir), "--concurrency", "1,3", "--num-requests", "4",
                       "--max-tokens", "8", "--kv-cache-memory", "8MiB", "--repeats", "2")
    assert_machine(result)
    assert result["config"]["repeats"] == 2
    rows = result["rows"]
    assert [(r["concurrency"], r["config"]) for r in rows] == [
        (c, s) for c in (1, 3) for s in ("auto (mlp)", "off", "on (mlp)")]
    for row in rows:
        assert row["requests"] == 4 and row["total_tok_s"] > 0
        assert row["req_s"] * row["seconds"] == pytest.approx(4)
        assert row["x_off"] == pytest.approx(row["total_tok_s"] / next(
            r["total_tok_s"] for r in rows if r["config"] == "off" and r["concurrency"] == row["concurrency"]))
        assert (row["spec_steps"] > 0) == (row["config"] == "on (mlp)") or row["config"].startswith("auto")
        assert row["x_off_round_min"] <= row["x_off_round_median"] <= row["x_off_round_max"]
        if row["config"] == "off":
            assert row["x_off_round_min"] == row["x_off_round_max"] == 1.0
    assert result["config"]["mean_prompt_tokens"] > 0


def test_a_control_engine_is_measured_against_off_not_taken_as_it(run_bench, tiny_llama_dir):
    # `control` is a second plain engine: the noise floor of x_off. Listed first, it must still be
    # measured against `off`, not become the baseline.
    result = run_bench("throughput", "--model", str(tiny_llama_dir), "--configs", "control,off",
                       "--concurrency", "2", "--num-requests", "4", "--max-tokens", "8",
                       "--kv-cache-memory", "8MiB", "--repeats", "3")
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"control", "off"}
    assert rows["off"]["x_off"] == 1.0 and rows["off"]["x_off_round_median"] == 1.0
    control = rows["control"]
    assert control["spec_steps"] == 0
    assert control["x_off"] == pytest.approx(control["total_tok_s"] / rows["off"]["total_tok_s"])
    assert control["x_off_round_min"] <= control["x_off_round_median"] <= control["x_off_round_max"]
    # every round's paired ratio is kept, in round order
    paired = result["extra"]["x_off_rounds"]
    assert len(paired["control @ 2"]) == 3 and set(paired["off @ 2"]) == {1.0}
    assert min(paired["control @ 2"]) == control["x_off_round_min"]


def test_throughput_rejects_bad_concurrency(run_bench, tiny_llama_dir):
    with pytest.raises(ValueError, match="positive integers"):
        run_bench("throughput", "--model", str(tiny_llama_dir), "--concurrency", "0,2")


def test_throughput_rejects_bad_repeats(run_bench, tiny_llama_dir):
    with pytest.raises(ValueError, match="--repeats"):
        run_bench("throughput", "--model", str(tiny_llama_dir), "--repeats", "0")
