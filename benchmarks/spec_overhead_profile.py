"""What the adaptive policy costs when it decides not to speculate: cProfile of N concurrent requests.

One engine with ``--speculator`` and ``speculation=auto`` runs N distinct chat prompts at once; the
share of engine-step time spent choosing levels (``SpecDecoder.choose``) and building proposals
(``ModelRunner._propose``) is what `auto` can cost against `off` at a load where it does not
speculate. cProfile inflates Python-heavy code, so the shares are upper bounds.

    python benchmarks/spec_overhead_profile.py --dtype bfloat16 --requests 32
"""

from __future__ import annotations

import cProfile
import pstats
import time

from auto_engine import auto_engine, parse_args  # benchmarks/, beside this script

from specserve.bench.engine_runs import run_concurrent


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], "bfloat16")
    engine, prompts = auto_engine(args, max_num_seqs=args.requests)
    run_concurrent(engine, prompts, 8)  # warm-up: gives the policy its first step costs
    before = engine.stats().get("spec_steps", 0)
    profile = cProfile.Profile()
    profile.enable()
    started = time.perf_counter()
    _, tokens = run_concurrent(engine, prompts, args.max_tokens)
    seconds = time.perf_counter() - started
    profile.disable()
    stats = pstats.Stats(profile).stats

    def cumulative(name: str, file: str) -> float:
        return sum(v[3] for k, v in stats.items() if k[2] == name and k[0].endswith(file))

    step = cumulative("step", "engine/engine.py")
    print(f"{args.dtype}, {args.requests} requests: {tokens / seconds:.1f} tok/s under cProfile, "
          f"{engine.stats().get('spec_steps', 0) - before} speculative steps")
    for name, file in (("choose", "spec/decoder.py"), ("_propose", "worker/model_runner.py"),
                       ("verify", "spec/decoder.py")):
        print(f"  {file}:{name}: {cumulative(name, file):.3f} s, {100 * cumulative(name, file) / step:.2f}% of step time")


if __name__ == "__main__":
    main()
