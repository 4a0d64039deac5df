"""Write trained speculators: IBM's accelerator format (full), its compact form, and Medusa's.

The shipped default is ``compact`` with ``borrow_base_embedding`` only: the embeddings are the base
model's own (frozen during training, so not stored) while the trained heads are kept, in bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from specserve.spec.checkpoint import save_mlp_speculator
from specserve.spec.medusa import MedusaHeads, save_medusa
from specserve.spec.mlp_speculator import MLPSpeculator


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(model).to(dtype)
    if getattr(model, "vocab_map", None) is not None:
        clone.vocab_map = model.vocab_map.clone()
    return clone


def export_mlp(model: MLPSpeculator, path: str | Path, form: str = "ibm", dtype: torch.dtype = torch.float32,
               extra_config: dict[str, object] | None = None) -> Path:
    """form: "ibm" (every tensor), "compact" (emb and heads borrowed), "compact-emb" (emb borrowed)."""
    path = Path(path)
    model = _cast(model, dtype)  # type: ignore[assignment]
    if form == "ibm":
        save_mlp_speculator(model, path, extra_config=extra_config)
    elif form == "compact":
        save_mlp_speculator(model, path, compact=True, extra_config=extra_config)
    elif form == "compact-emb":
        save_mlp_speculator(model, path, extra_config={**(extra_config or {}), "borrow_base_embedding": True})
        tensors = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("emb.")}
        save_file(tensors, str(path / "model.safetensors"))
    else:
        raise ValueError(f"unknown export form {form!r}")
    return path


def export_medusa(model: MedusaHeads, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    save_medusa(_cast(model, dtype), path)  # type: ignore[arg-type]
    return Path(path)


def write_training_card(path: Path, info: dict[str, object]) -> None:
    (path / "training.json").write_text(json.dumps(info, indent=2) + "\n")
