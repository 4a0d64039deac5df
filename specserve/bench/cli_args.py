"""The `specserve bench` subcommands' parsers (each benchmark module owns its own options)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_bench_parsers(sub: argparse._SubParsersAction, run_bench: Callable[[argparse.Namespace], int]) -> None:
    from specserve.bench import compare, latency, memory, plot, roofline, serve, throughput

    bench = sub.add_parser("bench", help="benchmarks (see docs/benchmarks.md)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, module, text in (
        ("compare", compare, "specserve vs transformers on the same weights, in one run"),
        ("latency", latency, "one request at a time: TTFT, ITL, tokens/s per speculation setup"),
        ("throughput", throughput, "offline: N requests at once, total tokens/s per concurrency"),
        ("serve", serve, "a server over HTTP: latency vs throughput under load"),
        ("memory", memory, "KV memory: paged blocks vs contiguous caches; speculation's extra slots"),
        ("roofline", roofline, "weights / measured bandwidth: the fastest possible plain decode"),
        ("plot", plot, "draw several `bench serve` results in one latency-vs-throughput PNG"),
    ):
        parser = bench_sub.add_parser(name, help=text)
        module.add_args(parser)
        parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        parser.set_defaults(func=run_bench, bench_module=module)
