from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from specserve.bench.report import make_plan
from specserve.bench.report_render import NOT_YET_RUN, render
from specserve.cli import build_parser

pytest.importorskip("matplotlib")


def _opts(results: Path, **kw: object) -> argparse.Namespace:
    base = {"model": None, "threads": 2, "results": str(results), "quick": False, "only": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_command_parses(tmp_path: Path, quick: bool):
    """The report's fixed settings must stay valid options of the benchmarks they run."""
    plan = make_plan(_opts(tmp_path, quick=quick), mlp_available=True)
    assert [s.name for s in plan.steps] == ["roofline", "latency", "throughput", "memory", "compare",
                                            "compare-bfloat16"]
    assert [label for label, _, _ in plan.serve_steps] == ["no-spec", "ngram", "mlp"]
    parser = build_parser()
    for step in plan.steps:
        args = parser.parse_args(["bench", *step.argv])
        assert args.json == str(tmp_path.resolve() / f"{step.name}.json") and args.threads == 2
    for _, client, server_argv in plan.serve_steps:
        parser.parse_args(["bench", *[a if a != "URL" else "http://x" for a in client.argv]])
        parser.parse_args(["serve", *server_argv])
    assert make_plan(_opts(tmp_path), mlp_available=False).serve_steps[-1][0] == "ngram"
    only = make_plan(_opts(tmp_path, only="latency,serve"), mlp_available=True)
    assert [s.name for s in only.steps] == ["latency"] and len(only.serve_steps) == 3


def test_render_shows_results_and_marks_the_rest_not_yet_run(run_bench, tiny_llama_dir, tmp_path: Path):
    results = tmp_path / "results"
    run_bench("latency", "--model", str(tiny_llama_dir), "--configs", "off", "--max-tokens", "4",
              "--num-prompts", "1", "--kv-cache-memory", "8MiB", "--bandwidth-mib", "8",
              json_path=results / "latency.json")
    run_bench("memory", "--model", str(tiny_llama_dir), "--num-requests", "4", "--max-tokens", "16",
              "--lengths", "uniform", "--kv-cache-memory", "1MiB", "--speculator", "none",
              json_path=results / "memory.json")
    doc = tmp_path / "docs" / "benchmarks.md"
    render(make_plan(_opts(results), mlp_available=False), results, doc, tmp_path / "docs" / "img")
    text = doc.read_text()
    assert text.startswith("# specserve benchmarks") and "python -m specserve.bench.report" in text
    assert "| config | prompts |" in text and "| paged blocks |" in text
    assert "![single-request decode tokens/s](img/latency.png)" in text
    assert (tmp_path / "docs" / "img" / "latency.png").stat().st_size > 5_000
    # roofline, throughput, both compare runs and both serve configurations have no results yet
    assert text.count(NOT_YET_RUN) == 6
    assert "compare --dtype bfloat16" in text
    assert "not yet run" in text.lower().split("## 4.")[1].split("## 5.")[0]
    assert "specserve bench memory --max-tokens 256" in text and "load average" in text
    # a hand-written section survives the next render; the generated part is replaced
    doc.write_text(text.replace("## 1.", "<!-- hand-written: start -->\nbefore/after notes\n"
                                "<!-- hand-written: end -->\n\n## 1.", 1) + "\nstale generated text\n")
    render(make_plan(_opts(results), mlp_available=False), results, doc, tmp_path / "docs" / "img")
    again = doc.read_text()
    assert again.count("before/after notes") == 1 and "stale generated text" not in again
