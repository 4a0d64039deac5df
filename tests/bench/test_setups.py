"""Benchmark setups resolve the learned speculator, with or without prompt lookup in front."""

from __future__ import annotations

from pathlib import Path

import pytest

from specserve.bench.common import turn_order
from specserve.bench.configs import resolve_setups

MODEL_DIR = Path("SmolLM2-135M-Instruct.Q4_1-abc")  # only its name is read: the shipped speculator's key


@pytest.mark.parametrize("speculator", ["default", "default+ngram"])
def test_shipped_speculator_runs_with_or_without_lookup(speculator: str) -> None:
    setups, notes = resolve_setups("off,mlp,auto", speculator, MODEL_DIR)
    assert notes == []
    assert [(s.label, s.speculator, s.speculation) for s in setups] == [
        ("off", None, "off"), ("mlp", speculator, "on"), ("auto (mlp)", speculator, "auto")]


def test_control_is_a_plain_engine_but_not_the_baseline() -> None:
    setups, _ = resolve_setups("control,off", "default", MODEL_DIR)
    assert [(s.label, s.speculator, s.speculation, s.is_baseline) for s in setups] == [
        ("control", None, "off", False), ("off", None, "off", True)]


def test_missing_speculator_is_skipped_with_a_note(tmp_path: Path) -> None:
    setups, notes = resolve_setups("off,mlp,auto", f"{tmp_path / 'nope'}+ngram", MODEL_DIR)
    assert [s.label for s in setups] == ["off", "auto (ngram)"]
    assert any("does not exist" in n for n in notes)
    with pytest.raises(ValueError, match="unknown configuration"):
        resolve_setups("fast", "default", MODEL_DIR)


def test_setups_take_turns_forwards_then_backwards() -> None:
    # Each setup runs first as often as last over an even number of turns, so a trend within a turn
    # (the machine warming or slowing) does not fall on one setup only.
    orders = [turn_order(3, turn) for turn in range(4)]
    assert orders == [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]]
    assert turn_order(1, 1) == [0]
