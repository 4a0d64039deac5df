"""Loss curves per stage from a training log (``OUT/log.jsonl``) as a PNG: ``python -m specserve.train.plot``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def plot_logs(logs: dict[str, Path], out_png: Path, smooth: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, path in logs.items():
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [e["step"] for e in entries]
        n_predict = len(entries[0]["stage_loss"])
        for i in range(n_predict):
            ys = [e["stage_loss"][i] for e in entries]
            ys = [sum(ys[max(0, j - smooth + 1):j + 1]) / len(ys[max(0, j - smooth + 1):j + 1]) for j in range(len(ys))]
            axes[0].plot(steps, ys, label=f"{label} stage {i}", linestyle="-" if label.startswith("mlp") else "--")
            val = [(e["step"], e["val"]["stage_acc"][i]) for e in entries if "val" in e]
            if val:
                axes[1].plot(*zip(*val), marker="o", label=f"{label} stage {i}",
                             linestyle="-" if label.startswith("mlp") else "--")
        switch = next((e["step"] for e in entries if e["phase"] == 2), None)
        if switch:
            axes[0].axvline(switch - 0.5, color="grey", linewidth=0.8)
    axes[0].set(xlabel="step", ylabel="cross-entropy (train, smoothed)", title="training loss per stage")
    axes[1].set(xlabel="step", ylabel="top-1 accuracy", title="held-out phase-2 shards: accuracy per stage")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log", nargs=2, action="append", metavar=("LABEL", "LOG"), required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    plot_logs({label: Path(p) for label, p in args.log}, Path(args.out))
