"""Shared benchmark pieces: the prompt set, machine description, timing helpers, result output."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SYSTEM = ("You are a helpful customer-care assistant for an online electronics shop. Answer politely, "
          "give concrete steps, and keep answers short.")
QUESTIONS = [
    "I ordered a laptop last week and the tracking page has not changed for four days. What should I do, "
    "and can you explain how your shipping and refund policy works?",
    "My new wireless headphones keep disconnecting from my phone every few minutes. I already tried "
    "restarting both devices. What else can I try before I send them back?",
    "Can you explain the difference between your standard warranty and the extended warranty, and "
    "which one you would recommend for a tablet used by children?",
    "I was charged twice for the same order of a phone case. How do I get one of the charges refunded, "
    "and how long will it take to appear on my card?",
    "How do I reset the password of my account if I no longer have access to the email address I used "
    "when I signed up?",
    "Write a short, friendly message I can send to a customer whose order of a coffee machine will be "
    "delayed by one week because of a supplier problem.",
    "The screen of my smart watch cracked after a small fall. Is this covered, and what are my options "
    "for a repair or a replacement?",
    "I want to return a keyboard I bought twenty days ago. It works fine but I do not like the feel of "
    "the keys. Is that possible and who pays for the return shipping?",
]
REWRITE_PROMPT = (
    "Correct the typos in the following text and return the corrected text only:\n\n"
    "Thank you for contacting our suport team. We have recieved your request about the delayed order "
    "and we are lookng into it. Your order number is 48213 and it was shipped on monday from our "
    "warehouse in Rotterdam. The parcel is curently with the courier and should arive within two "
    "buisness days. If it does not arrive by friday, please reply to this mesage and we will send a "
    "replacement or issue a full refund, which ever you prefer.")


def chat_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


@dataclass
class MachineInfo:
    cpu_count: int | None
    torch_threads: int
    load_average_1m: float
    platform: str
    processor: str
    torch_version: str

    @classmethod
    def read(cls) -> MachineInfo:
        import torch

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else -1.0
        return cls(os.cpu_count(), torch.get_num_threads(), round(load, 2), platform.platform(),
                   _cpu_name(), torch.__version__)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


@dataclass
class BenchResult:
    name: str
    config: dict[str, Any]
    machine: MachineInfo
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def print_table(self) -> None:
        print(f"\n== {self.name} ==")
        print("config:", json.dumps(self.config))
        m = self.machine
        print(f"machine: {m.processor}, {m.cpu_count} cores, torch {m.torch_version}, "
              f"{m.torch_threads} threads, load average {m.load_average_1m} at start")
        if not self.rows:
            return
        keys = list(self.rows[0].keys())
        widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in self.rows)) for k in keys}
        print("  ".join(k.ljust(widths[k]) for k in keys))
        for row in self.rows:
            print("  ".join(_fmt(row.get(k)).ljust(widths[k]) for k in keys))
        for key, value in self.extra.items():
            print(f"{key}: {value}")

    def write_json(self, path: str | None) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
