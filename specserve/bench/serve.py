"""`specserve bench serve`: latency against throughput of a running server, over HTTP.

Against ``--url`` (any OpenAI-compatible server: specserve, vLLM, llama.cpp's server) or a server this
command starts in-process on 127.0.0.1 (``--launch``, with the engine options below). Each point of
the curve is one offered load: a Poisson rate (``--rate 1,2,4,inf``) or a number of concurrent clients
(``--concurrency 1,2,4,...,64``, the default); see serve_client.py for what is timed. ``--plot`` draws
the curve (``--merge`` adds the curves of earlier results, e.g. another ``--label``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from specserve.bench.common import BenchResult, MachineInfo, parse_int_list
from specserve.bench.serve_client import LoadSpec, first_error, run_load, summarize


def add_args(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", default=None, help="server root, e.g. http://127.0.0.1:8000")
    target.add_argument("--launch", action="store_true", help="start a server in this process")
    parser.add_argument("--label", default=None, help="the curve's name (default: from the server)")
    parser.add_argument("--rate", default=None, help="Poisson request rates, e.g. 0.5,1,2,inf")
    parser.add_argument("--concurrency", default=None, help="concurrent clients (default 1,2,4,8,16,32,64)")
    parser.add_argument("--num-requests", type=int, default=64, help="requests per point, at most")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per point, at most")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="requests sent before the first point")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--plot", default=None, help="PNG: latency vs throughput")
    parser.add_argument("--merge", nargs="*", default=[], help="earlier results to draw in the same plot")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--json", default=None, help="write the result here")
    engine = parser.add_argument_group("with --launch")
    engine.add_argument("--model", default=None)
    engine.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    engine.add_argument("--speculator", default=None, help="ngram | default | PATH (default: none)")
    engine.add_argument("--speculation", default="auto", choices=["auto", "on", "off"])
    engine.add_argument("--kv-cache-memory", default="1GiB")
    engine.add_argument("--max-num-seqs", type=int, default=64)


def _points(args: argparse.Namespace) -> list[tuple[str, float]]:
    points: list[tuple[str, float]] = []
    if args.rate:
        for text in args.rate.split(","):
            rate = float(text)
            if not rate > 0:
                raise ValueError(f"--rate values must be > 0, got {text!r}")
            points.append(("rate", rate))
    if args.concurrency or not args.rate:
        points += [("concurrency", float(c)) for c in parse_int_list(args.concurrency or "1,2,4,8,16,32,64")]
    return points


def _model_id(url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


def _progress(total: int, desc: str, disable: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=disable, leave=False)


def run(args: argparse.Namespace) -> BenchResult:
    if args.num_requests < 1 or args.duration <= 0:
        raise ValueError("--num-requests must be >= 1 and --duration > 0")
    points = _points(args)
    machine = MachineInfo.read()
    server = None
    config: dict[str, Any] = {"max_tokens": args.max_tokens, "num_requests": args.num_requests,
                              "duration_s": args.duration, "seed": args.seed, "warmup": args.warmup,
                              "points": [f"{mode}={value:g}" for mode, value in points],
                              "prompts": "chat prompts with a ticket number; greedy; ignore_eos"}
    if args.launch:
        from specserve.bench.launch import launch_server
        from specserve.engine.model_setup import load_bundle

        bundle = load_bundle(args.model, args.dtype)
        engine_kwargs = {"speculator": args.speculator, "speculation": args.speculation,
                         "kv_cache_memory": args.kv_cache_memory, "max_num_seqs": args.max_num_seqs}
        server = launch_server(bundle, engine_kwargs)
        url = server.url
        config.update({"server": "in-process (--launch)", **engine_kwargs, "dtype": args.dtype})
    else:
        url = args.url.rstrip("/")
        config["server"] = url
    try:
        model = _model_id(url, args.api_key)
        label = args.label or (f"{model} {args.speculator or 'no-spec'}" if server else model)
        config.update({"model": model, "label": label})
        result = BenchResult("serve", config, machine)
        if args.warmup:
            warm = LoadSpec(url, model, min(args.max_tokens, 16), args.warmup, duration_s=300.0, concurrency=1,
                            api_key=args.api_key)
            records, _, _ = asyncio.run(run_load(warm))
            if not any(r.ok for r in records):
                raise RuntimeError(f"warm-up requests failed: {first_error(records) or 'no answer'}")
        for mode, value in points:
            load = LoadSpec(url, model, args.max_tokens, args.num_requests, args.duration, seed=args.seed,
                            api_key=args.api_key, rate=value if mode == "rate" else None,
                            concurrency=int(value) if mode == "concurrency" else None)
            before = server.stats() if server else {}
            with _progress(args.num_requests, f"{mode}={value:g}", args.no_progress) as bar:
                records, unfinished, seconds = asyncio.run(run_load(load, lambda r: bar.update(1)))
            offered = value if mode == "rate" else int(value)
            row: dict[str, Any] = {"label": label, "mode": mode, "offered": offered,
                                   **summarize(records, unfinished, seconds)}
            if server is not None:
                server.wait_idle()
                after = server.stats()
                steps = after.get("spec_steps", 0) - before.get("spec_steps", 0)
                emitted = after.get("spec_emitted_tokens", 0) - before.get("spec_emitted_tokens", 0)
                row["mean_accepted"] = emitted / steps if steps else None
            result.rows.append(row)
            error = first_error(records)
            if error:
                result.notes.append(f"{mode}={value:g}: {row['failed']} failed, e.g. {error}")
    finally:
        if server is not None:
            server.stop()
    result.finish(args)
    if args.plot:
        from specserve.bench.plot import plot_serve

        merged = [json.loads(Path(p).read_text()) for p in args.merge]
        result.extra["plot"] = str(plot_serve(merged + [_as_dict(result)], args.plot))
    return result


def _as_dict(result: BenchResult) -> dict[str, Any]:
    return {"name": result.name, "rows": result.rows, "config": result.config}
