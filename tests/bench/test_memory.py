from __future__ import annotations

from conftest import assert_machine


def test_paged_blocks_waste_less_than_contiguous_caches(run_bench, tiny_llama_dir, bench_mlp_dir):
    result = run_bench("memory", "--model", str(tiny_llama_dir), "--num-requests", "12", "--max-tokens", "48",
                       "--lengths", "uniform", "--kv-cache-memory", "1MiB", "--speculator", str(bench_mlp_dir))
    assert_machine(result)
    extra = result["extra"]
    paged, contiguous = extra["paged_waste_fraction"], extra["contiguous_waste_fraction"]
    assert 0 <= paged < contiguous <= 1
    assert contiguous < extra["contiguous_model_len_waste_fraction"] <= 1
    # Paged waste is at most the unfilled part of each request's last block.
    assert paged < result["config"]["block_size"] / result["config"]["mean_prompt_tokens"]
    assert extra["paged_requests_fit"] > extra["contiguous_requests_fit"] >= 1
    assert extra["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 KV heads, head_dim 16, fp32
    assert 1 <= extra["paged_peak_running"] <= 12 and extra["steps_sampled"] > 0
    assert 6 <= extra["mean_output_tokens"] <= 48  # uniform in [max_tokens / 8, max_tokens]
    paged_row, contiguous_row, model_len_row = result["rows"]
    per_token = [row["bytes_per_held_token"] for row in (paged_row, contiguous_row, model_len_row)]
    assert per_token == sorted(per_token) and len(set(per_token)) == 3
    # Speculation: drafts were verified, each within the speculator's bound (3 deep x 2 candidates).
    assert extra["spec_request_steps"] > 0
    assert extra["spec_max_draft_tokens_bound"] == 6
    assert 0 < extra["spec_draft_tokens_mean"] <= extra["spec_draft_tokens_max"] <= 6
    assert 0 <= extra["spec_extra_blocks_per_request_max"] <= extra["spec_extra_blocks_bound"] == 1
    assert extra["spec_draft_slot_bytes_max"] == extra["spec_draft_tokens_max"] * extra["kv_bytes_per_token"]
