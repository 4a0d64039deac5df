"""Paired statistics of a `bench throughput` result's rounds: each setup's per-round ratio to `off`
(``extra.x_off_rounds`` in its JSON), as a geometric mean with a 95% confidence interval (Student's t
on the log ratios), and each setup against `control` round by round when there is one.

    python benchmarks/paired_rounds.py benchmarks/results/s13_throughput_c8_c32_12rounds.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

# Student's t, 97.5th percentile, by degrees of freedom (1-30); the normal 1.96 beyond.
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def geometric_mean_ci(log_ratios: list[float]) -> tuple[float, float, float]:
    mean = statistics.fmean(log_ratios)
    df = len(log_ratios) - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96
    half = t * statistics.stdev(log_ratios) / math.sqrt(len(log_ratios))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="a bench throughput --json file")
    args = parser.parse_args()
    rounds: dict[str, list[float]] = json.load(open(args.result))["extra"]["x_off_rounds"]
    for key, ratios in rounds.items():
        label, concurrency = key.rsplit(" @ ", 1)
        if label == "off" or len(ratios) < 2:
            continue
        mean, low, high = geometric_mean_ci([math.log(r) for r in ratios])
        line = f"{label:12s} @ {concurrency:>3s}: {mean:.3f}x off (95% CI {low:.3f}-{high:.3f}, {len(ratios)} rounds)"
        control = rounds.get(f"control @ {concurrency}")
        if control and label != "control":
            mean, low, high = geometric_mean_ci([math.log(a / b) for a, b in zip(ratios, control)])
            line += f"; {mean:.3f}x control (95% CI {low:.3f}-{high:.3f})"
        print(line)


if __name__ == "__main__":
    main()
