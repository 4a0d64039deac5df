"""Named speculation setups shared by the benchmarks: ``--configs off,ngram,mlp,auto``.

| name         | speculator                       | speculation |
|--------------|----------------------------------|-------------|
| ``off``      | none                             | -           |
| ``ngram``    | prompt lookup                    | on          |
| ``ngram-auto`` | prompt lookup                  | auto        |
| ``mlp``      | ``--speculator`` (MLP, Medusa…)  | on          |
| ``mlp-auto`` | ``--speculator``                 | auto        |
| ``on``       | ``mlp`` if available, else ``ngram`` | on      |
| ``auto``     | ``mlp-auto`` if available, else ``ngram-auto`` | auto |
| ``control``  | none: a second engine like ``off``  | -        |

``control`` measures the benchmark's own noise: its ``x_off`` would be 1 on a quiet machine, so a
setup's ratio to ``off`` means something only where it lies outside the control's.

A learned speculator that is not there (the shipped one may not be trained yet) is skipped with a
note, never an error: the other setups still run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from specserve.spec.checkpoint import SpeculatorLoadError
from specserve.spec.factory import default_speculator_for

SETUP_NAMES = ("off", "ngram", "ngram-auto", "mlp", "mlp-auto", "on", "auto", "control")


class SpecSetup(NamedTuple):
    label: str  # what tables show, e.g. "auto (mlp)"
    speculator: str | None
    speculation: str  # "on" | "auto" | "off"

    @property
    def is_baseline(self) -> bool:
        """The setup every ``x_off`` is taken against (``control`` is plain too, but measured like the rest)."""
        return self.label == "off"

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        return {"speculator": self.speculator, "speculation": self.speculation}


def learned_speculator_problem(speculator: str, model_dir: Path) -> str | None:
    """Why the learned speculator cannot be used here, or None when it can."""
    speculator = speculator.removesuffix("+ngram")  # prompt lookup in front needs nothing more
    if speculator == "default":
        try:
            default_speculator_for(model_dir)
        except SpeculatorLoadError as exc:
            return str(exc)
        return None
    path = Path(speculator.partition(":")[2] if speculator.startswith(("mlp:", "medusa:")) else speculator)
    return None if path.exists() else f"speculator path {path} does not exist"


def resolve_setups(names: str, speculator: str, model_dir: Path) -> tuple[list[SpecSetup], list[str]]:
    """Comma-separated setup names -> (setups to run, notes about skipped ones)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in SETUP_NAMES]
    if unknown or not wanted:
        raise ValueError(f"unknown configuration {unknown[0] if unknown else names!r}; "
                         f"choose from {', '.join(SETUP_NAMES)}")
    problem = learned_speculator_problem(speculator, model_dir)
    setups: list[SpecSetup] = []
    notes: list[str] = []
    for name in dict.fromkeys(wanted):
        if name in ("off", "control"):
            setups.append(SpecSetup(name, None, "off"))
        elif name in ("ngram", "ngram-auto"):
            setups.append(SpecSetup(name, "ngram", "on" if name == "ngram" else "auto"))
        elif name in ("mlp", "mlp-auto"):
            if problem is not None:
                notes.append(f"skipped '{name}': {problem}")
                continue
            setups.append(SpecSetup(name, speculator, "on" if name == "mlp" else "auto"))
        else:  # "on" / "auto": the best speculator available
            kind = "ngram" if problem is not None else "mlp"
            spec = "ngram" if problem is not None else speculator
            setups.append(SpecSetup(f"{name} ({kind})", spec, name))
            if problem is not None:
                notes.append(f"'{name}' uses prompt lookup (ngram): {problem}")
    return setups, notes
