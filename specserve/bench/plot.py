"""PNG figures from benchmark JSON files (matplotlib, Agg backend: no display needed).

- ``plot_serve``: latency against throughput, one curve per configuration (``bench serve --label``),
  from one or several ``bench serve`` results: ``specserve bench plot a.json b.json --out fig.png``.
- ``plot_latency``: single-request decode tokens/s per setup and prompt set, with the roofline.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from specserve.bench.common import BenchResult, MachineInfo


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'specserve[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def serve_curves(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows of serve results grouped into curves by '<label> (<mode>)', sorted by offered load."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        for row in result.get("rows", []):
            if row.get("completed"):
                curves.setdefault(f"{row['label']} ({row['mode']})", []).append(row)
    for rows in curves.values():
        rows.sort(key=lambda r: float(r["offered"]))
    return curves


def plot_serve(results: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    plt = _pyplot()
    curves = serve_curves(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    panels = (("tpot_ms_p50", "median time per output token (ms)"), ("ttft_ms_p50", "median TTFT (ms)"),
              ("e2e_s_p99", "p99 end-to-end latency (s)"))
    for ax, (key, ylabel) in zip(axes, panels):
        for name, rows in curves.items():
            xs = [r["output_tok_s"] for r in rows]
            ys = [r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=name)
            for x, y, r in zip(xs, ys, rows):
                ax.annotate(f"{r['offered']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel("throughput (output tokens/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or "latency vs throughput (points: offered load; rate r/s or concurrency)")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_latency(result: dict[str, Any], path: str | Path) -> Path:
    plt = _pyplot()
    rows = [r for r in result.get("rows", []) if r.get("config") != "roofline"]
    roofline = result.get("extra", {}).get("roofline_decode_tok_s")
    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['config']}\n{r['prompts']}" for r in rows]
    ax.bar(range(len(rows)), [r["decode_tok_s"] for r in rows], color="tab:blue")
    if roofline:
        ax.axhline(roofline, color="tab:red", linestyle="--", label=f"roofline, no speculation ({roofline:.0f})")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("single-request decode tokens/s")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- `specserve bench plot` ----------------------------------------------------------------------

def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", help="bench serve --json files to draw together")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    parser.add_argument("--json", default=None, help="write the merged points here")


def run(args: argparse.Namespace) -> BenchResult:
    results = [json.loads(Path(p).read_text()) for p in args.results]
    out = plot_serve(results, args.out, args.title)
    merged = BenchResult("plot", {"inputs": list(args.results), "out": str(out)}, MachineInfo.read())
    for name, rows in serve_curves(results).items():
        merged.rows.append({"curve": name, "points": len(rows),
                            "max_output_tok_s": max(r["output_tok_s"] for r in rows),
                            "min_tpot_ms_p50": min(r["tpot_ms_p50"] for r in rows)})
    merged.tables["points"] = [row for result in results for row in result.get("rows", [])]
    return merged.finish(args)
