"""Run every benchmark with fixed settings and write docs/benchmarks.md: ``python -m specserve.bench.report``.

Each benchmark runs in its own process (``specserve bench NAME ... --json``), one after the other, so
that none inherits another's memory or threads; the serving benchmark talks to ``specserve serve``
started in a separate process for each configuration (client and server must not share a GIL). Results
land in ``benchmarks/results/*.json`` (with the console output in ``*.txt``), figures in
``docs/img/``, and the document is rendered from whatever results exist: a benchmark without results
shows as "not yet run". ``--render-only`` re-renders without running anything.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SERVE_CONFIGS = (("no-spec", None), ("ngram", "ngram"), ("mlp", "default"))  # label, --speculator


@dataclass(frozen=True)
class Step:
    name: str  # results file stem
    argv: tuple[str, ...]  # after `specserve bench`

    @property
    def command(self) -> str:
        return "specserve bench " + " ".join(a.replace(str(REPO) + os.sep, "") for a in self.argv)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    serve_steps: tuple[tuple[str, Step, tuple[str, ...]], ...]  # (label, client step, server argv)


def make_plan(opts: argparse.Namespace, mlp_available: bool) -> Plan:
    quick = opts.quick
    tokens = "32" if quick else "128"
    model = ("--model", opts.model) if opts.model else ()
    threads = ("--threads", str(opts.threads))
    res = Path(opts.results).resolve()

    def step(name: str, *argv: str) -> Step:
        return Step(name, (name.split("-")[0], *model, *argv, *threads, "--json", str(res / f"{name}.json")))

    compare_spec = ("--speculator", "default") if mlp_available else ()
    steps: tuple[Step, ...] = (
        step("roofline", "--max-tokens", tokens),
        step("latency", "--configs", "off,ngram,mlp,auto", "--max-tokens", tokens,
             *(("--num-prompts", "2") if quick else ())),
        step("throughput", "--configs", "off,auto,on", "--max-tokens", tokens,
             "--num-requests", "8" if quick else "32", "--concurrency", "1,8" if quick else "1,8,32"),
        step("memory", "--max-tokens", "64" if quick else "256", "--num-requests", "16" if quick else "64",
             "--kv-cache-memory", "256MiB", "--lengths", "eos"),
        *(step(name, "--dtype", dtype, "--max-tokens", tokens, "--concurrency", "8" if quick else "32",
               "--repeats", "1" if quick else "3", *compare_spec)
          for name, dtype in (("compare", "float32"), ("compare-bfloat16", "bfloat16"))),
    )
    serve_steps = []
    for label, speculator in SERVE_CONFIGS:
        if speculator == "default" and not mlp_available:
            continue
        server_argv = (*model, *threads, "--max-num-seqs", "64", "--kv-cache-memory", "1GiB",
                       *(("--speculator", speculator) if speculator else ()))
        client = Step(f"serve-{label}", (
            "serve", "--url", "URL", "--label", label, "--concurrency", "1,4,16" if quick else "1,2,4,8,16,32,64",
            "--num-requests", "8" if quick else "32", "--duration", "30" if quick else "60",
            "--max-tokens", tokens, "--no-progress", "--json", str(res / f"serve-{label}.json")))
        serve_steps.append((label, client, server_argv))
    if opts.only:
        wanted = set(opts.only.split(","))
        steps = tuple(s for s in steps if s.name in wanted)
        serve_steps = [s for s in serve_steps if "serve" in wanted]
    return Plan(steps, tuple(serve_steps))


def _run_logged(argv: list[str], log: Path) -> int:
    """Run a command, its output both on the console and in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            out.write(line)
        return proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve_and_measure(label: str, client: Step, server_argv: tuple[str, ...], results: Path) -> int:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (results / f"server-{label}.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "specserve.cli", "serve", "--port", str(port), *server_argv],
                              stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                print(f"server for {label} exited with {server.returncode}; see {log.name}")
                return 1
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print(f"server for {label} did not come up")
                return 1
            time.sleep(1)
        argv = [a if a != "URL" else url for a in client.argv]
        return _run_logged([sys.executable, "-m", "specserve.cli", "bench", *argv], results / f"{client.name}.txt")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def run_plan(plan: Plan, results: Path) -> list[str]:
    """Run every step; returns the names of those that failed (the others still run)."""
    failed = []
    for step in plan.steps:
        print(f"\n### {step.command}", flush=True)
        started = time.monotonic()
        argv = [sys.executable, "-m", "specserve.cli", "bench", *step.argv]
        code = _run_logged(argv, results / f"{step.name}.txt")
        print(f"### {step.name}: exit {code} after {time.monotonic() - started:.0f}s", flush=True)
        if code:
            failed.append(step.name)
    for label, client, server_argv in plan.serve_steps:
        print(f"\n### specserve serve {' '.join(server_argv)}  +  {client.command}", flush=True)
        if _serve_and_measure(label, client, server_argv, results):
            failed.append(client.name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m specserve.bench.report", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--img", default=str(REPO / "docs" / "img"))
    parser.add_argument("--only", default=None,
                        help="comma-separated: roofline,latency,throughput,memory,compare,serve")
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke test, not figures")
    parser.add_argument("--render-only", action="store_true", help="only re-render the document from results")
    opts = parser.parse_args(argv)
    from specserve.bench.configs import learned_speculator_problem
    from specserve.bench.report_render import render
    from specserve.model.loader import resolve_model_dir

    results = Path(opts.results)
    mlp_problem = learned_speculator_problem("default", resolve_model_dir(opts.model))
    mlp_available = mlp_problem is None
    plan = make_plan(opts, mlp_available)
    failed: list[str] = []
    if not opts.render_only:
        results.mkdir(parents=True, exist_ok=True)
        failed = run_plan(plan, results)
    doc = render(make_plan(argparse.Namespace(**{**vars(opts), "only": None}), mlp_available),
                 results, Path(opts.doc), Path(opts.img), quick=opts.quick, mlp_note=mlp_problem)
    print(f"\nwrote {doc}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
