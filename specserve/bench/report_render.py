"""docs/benchmarks.md from the JSON results of the report's plan: tables, figures, commands, machine.

A benchmark with no result file is rendered as "not yet run", with the command that produces it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from specserve.bench.report import REPO, Plan

SECTIONS = {  # name -> (title, what it measures)
    "roofline": ("Roofline: the fastest plain decode this machine allows", (
        "Every decode step reads all the weights once, so without speculation single-request decode "
        "cannot beat (read bandwidth) / (weight bytes). The bandwidth is measured in the same run "
        "(a large torch sum; a copy for reference).")),
    "latency": ("Latency: one request at a time", (
        "Greedy, exactly max_tokens tokens per request (EOS ignored), each speculation setup on the "
        "chat prompts and on the typo-correction prompt. ITL: a step that brings k tokens counts as k "
        "gaps of a k-th of its time. `x_roofline` > 1 is only possible with speculation.")),
    "throughput": ("Throughput: N requests at once, offline", (
        "All requests queued together; at most `concurrency` run at a time. `x_off`: total tokens/s "
        "over speculation off at the same concurrency (adaptive speculation must stay >= ~1).")),
    "serve": ("Serving: latency against throughput over HTTP", (
        "`specserve serve` in its own process per configuration; concurrent streaming chat clients; each "
        "point bounded by a number of requests and seconds. ITL: gaps between streamed chunks; TPOT: "
        "(e2e - TTFT) / (tokens - 1).")),
    "memory": ("KV memory: paged blocks against contiguous caches", (
        "Waste = KV slots allocated but holding no token, over slots allocated, sampled after every "
        "engine step and averaged over the run. Contiguous caches reserve each request's maximum "
        "length up front (prompt + max_tokens, or the model's context). Prefix caching off. Then the "
        "slots speculation's draft tokens take during a step.")),
    "compare": ("Against transformers and llama.cpp, on the same weights",
                "Ratios measured in one process travel between machines; absolute figures do not."),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value).replace("|", "/")


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_(no rows)_\n"
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return None


def _display(command: str) -> str:
    return command.replace(str(REPO) + os.sep, "")


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (f"{m['processor']}, {m['cpu_count']} cores, {m['torch_threads']} torch threads, torch "
            f"{m['torch_version']}, {m['platform']}; load average {m['load_average_1m']} at start, "
            f"{result.get('load_average_1m_end', '?')} at end")


def _result_block(result: dict[str, Any]) -> str:
    config = json.dumps(result.get("config", {}), default=str)
    out = [f"Machine: {_machine_line(result)}.\n",
           f"<details><summary>configuration</summary>\n\n```json\n{config}\n```\n</details>\n",
           table(result.get("rows", []))]
    for name, rows in result.get("tables", {}).items():
        out.append(f"\n{name}:\n\n{table(rows)}")
    extra = {k: v for k, v in result.get("extra", {}).items()
             if k != "plot" and not isinstance(v, (list, dict))}
    if extra:
        out.append("\n" + table([{"figure": k, "value": v} for k, v in extra.items()]))
    out += [f"\n> note: {note}\n" for note in result.get("notes", [])]
    return "\n".join(out)


NOT_YET_RUN = "**Not yet run.** The figures will go here once the command above has run.\n"


def render(plan: Plan, results: Path, doc: Path, img: Path, quick: bool = False,
           mlp_note: str | None = None) -> Path:
    from specserve.bench.plot import plot_latency, plot_serve

    parts = [_header(quick)]
    kept = kept_section(doc)
    if kept:
        parts.append(kept)
    if mlp_note:
        parts.append(f"> When this file was written the learned speculator was missing ({mlp_note}): the "
                     "`mlp` configurations are skipped or fall back to prompt lookup (ngram).\n")
    for index, (name, (title, text)) in enumerate(SECTIONS.items(), start=1):
        parts.append(f"## {index}. {title}\n\n{text}\n")
        if name == "serve":
            parts.append(_serve_section(plan, results, doc, img, plot_serve))
            continue
        # A section may have variants, e.g. compare (float32) and compare-bfloat16.
        for step in [s for s in plan.steps if s.name == name or s.name.startswith(name + "-")]:
            parts.append(f"```\n{_display(step.command)}\n```\n")
            result = _load(results / f"{step.name}.json")
            parts.append(NOT_YET_RUN if result is None else _result_block(result))
        result = _load(results / f"{name}.json")
        if result is not None and name == "latency":
            figure = plot_latency(result, img / "latency.png")
            parts.append(f"\n![single-request decode tokens/s]({os.path.relpath(figure, doc.parent)})\n")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(parts))
    return doc


def _serve_section(plan: Plan, results: Path, doc: Path, img: Path, plot_serve: Any) -> str:
    out = []
    found = []
    for label, client, server_argv in plan.serve_steps:
        out.append(f"```\nspecserve serve --port PORT {_display(' '.join(server_argv))}\n"
                   f"{_display(client.command).replace('URL', 'http://127.0.0.1:PORT')}\n```\n")
        result = _load(results / f"{client.name}.json")
        if result is None:
            out.append(NOT_YET_RUN)
        else:
            found.append(result)
            out.append(_result_block(result))
    if found:
        figure = plot_serve(found, img / "serve_latency_throughput.png")
        out.append(f"\n![latency vs throughput]({os.path.relpath(figure, doc.parent)})\n")
    else:
        out.append("_Figure (latency vs throughput, one curve per configuration): not yet run._\n")
    return "\n".join(out)


KEEP_START, KEEP_END = "<!-- hand-written: start -->", "<!-- hand-written: end -->"


def kept_section(doc: Path) -> str | None:
    """The hand-written part of an existing document (between KEEP_START and KEEP_END, markers
    included): notes and before/after tables that no single benchmark run produces survive a re-render."""
    if not doc.exists():
        return None
    text = doc.read_text()
    start, end = text.find(KEEP_START), text.find(KEEP_END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(KEEP_END)] + "\n"


def _header(quick: bool) -> str:
    warning = ("\n> **These figures come from `--quick`: small settings for a smoke test, not measurements.**\n"
               if quick else "")
    return f"""# specserve benchmarks

**Regenerate everything** (from the repository root, in the virtualenv, on a machine with nothing else
running: the load average at start and end of each benchmark is printed next to its figures):

```
python -m specserve.bench.report            # or: benchmarks/run_all.sh
```

It runs each benchmark below in its own process with the fixed settings shown, one after the other
(about an hour on 2 cores; `--quick` for a few-minute smoke run, `--only latency,serve` for a subset),
writes `benchmarks/results/*.json` (+ console output `*.txt`), the figures in `docs/img/`, and this
file. `python -m specserve.bench.report --render-only` re-renders from existing results. Every
benchmark prints its configuration and accepts `--json PATH`; see `specserve bench --help`.

The machines are shared and noisy: compare ratios measured in one run, not absolute numbers across
runs.
{warning}"""
