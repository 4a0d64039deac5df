"""Shared benchmark pieces: the prompt set, machine description, timing helpers, result output.

Every benchmark returns a BenchResult: its configuration, the machine (with the load average at start
and end: on a busy machine no figure means much), one main table, optional further tables, and notes
for what was skipped. ``--json PATH`` writes it whole; docs/benchmarks.md is rendered from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

SYSTEM = ("You are a helpful customer-care assistant for an online electronics shop. Answer politely, "
          "give concrete steps, and keep answers short.")
QUESTIONS = [
    ("I ordered a laptop last week and the tracking page has not changed for four days. What should I do, "
     "and can you explain how your shipping and refund policy works?"),
    ("My new wireless headphones keep disconnecting from my phone every few minutes. I already tried "
     "restarting both devices. What else can I try before I send them back?"),
    ("Can you explain the difference between your standard warranty and the extended warranty, and "
     "which one you would recommend for a tablet used by children?"),
    ("I was charged twice for the same order of a phone case. How do I get one of the charges refunded, "
     "and how long will it take to appear on my card?"),
    ("How do I reset the password of my account if I no longer have access to the email address I used "
     "when I signed up?"),
    ("Write a short, friendly message I can send to a customer whose order of a coffee machine will be "
     "delayed by one week because of a supplier problem."),
    ("The screen of my smart watch cracked after a small fall. Is this covered, and what are my options "
     "for a repair or a replacement?"),
    ("I want to return a keyboard I bought twenty days ago. It works fine but I do not like the feel of "
     "the keys. Is that possible and who pays for the return shipping?"),
]
REWRITE_PROMPT = (
    "Correct the typos in the following text and return the corrected text only:\n\n"
    "Thank you for contacting our suport team. We have recieved your request about the delayed order "
    "and we are lookng into it. Your order number is 48213 and it was shipped on monday from our "
    "warehouse in Rotterdam. The parcel is curently with the courier and should arive within two "
    "buisness days. If it does not arrive by friday, please reply to this mesage and we will send a "
    "replacement or issue a full refund, which ever you prefer.")


def chat_messages(i: int, distinct: bool = False) -> list[dict[str, str]]:
    """The i-th chat prompt (cycling over QUESTIONS); ``distinct`` adds a ticket number so that the i-th
    and the (i + 8)-th differ after the shared system prompt (as real traffic does)."""
    question = QUESTIONS[i % len(QUESTIONS)]
    if distinct:
        question += f" (ticket {1000 + i})"
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def conversation_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation in the model's chat template, ready for the assistant's answer."""
    return list(tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True)))


def chat_prompt_ids(tokenizer: Any, i: int, distinct: bool = False) -> list[int]:
    return conversation_ids(tokenizer, chat_messages(i, distinct))


def rewrite_messages() -> list[dict[str, str]]:
    """The typo-correction prompt: most of the answer can be copied from the prompt (prompt lookup wins)."""
    return [{"role": "user", "content": REWRITE_PROMPT}]


def rewrite_prompt_ids(tokenizer: Any) -> list[int]:
    return conversation_ids(tokenizer, rewrite_messages())


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

        return cls(os.cpu_count(), torch.get_num_threads(), load_average_1m(), platform.platform(),
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
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # further named tables
    notes: list[str] = field(default_factory=list)  # skipped configurations and caveats, one line each
    load_average_1m_end: float | None = None
    arguments: dict[str, Any] = field(default_factory=dict)  # every command-line option, defaults included

    def finish(self, args: argparse.Namespace | None = None) -> BenchResult:
        """Record the load average at the end (a busy machine makes every figure suspect) and the options."""
        self.load_average_1m_end = load_average_1m()
        if args is not None:
            self.arguments = {k: v for k, v in vars(args).items() if k not in ("func", "bench_module")}
        return self

    def print_table(self) -> None:
        print(f"\n== {self.name} ==")
        print("config:", json.dumps(self.config, default=str))
        m = self.machine
        end = "" if self.load_average_1m_end is None else f", {self.load_average_1m_end} at end"
        print(f"machine: {m.processor}, {m.cpu_count} cores, torch {m.torch_version}, "
              f"{m.torch_threads} threads, load average {m.load_average_1m} at start{end}")
        _print_rows(self.rows)
        for name, rows in self.tables.items():
            print(f"\n-- {name} --")
            _print_rows(rows)
        for key, value in self.extra.items():
            print(f"{key}: {value}")
        for note in self.notes:
            print(f"note: {note}")

    def write_json(self, path: str | None) -> None:
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")


def _print_rows(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    widths = {k: max(len(k), *(len(_fmt(r.get(k))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for row in rows:
        print("  ".join(_fmt(row.get(k)).ljust(widths[k]) for k in keys))


def load_average_1m() -> float:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else -1.0


def turn_order(num_setups: int, turn: int) -> list[int]:
    """The order in which setups run at their ``turn``-th turn: forwards, then backwards (A B, B A, ...).

    Why: with a fixed order the second setup always runs right after the first, so a trend of the
    shared machine within each turn (a cache warmed, a neighbour's load rising) falls on one setup
    only; alternating turns cancel a linear trend in the paired ratios.
    """
    order = list(range(num_setups))
    return order if turn % 2 == 0 else order[::-1]


def parse_int_list(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; every value must be a positive integer."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "-" if value is None else str(value)


class Timer:
    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
