"""Load and save MLP speculators in IBM's accelerator format (config.json + model.safetensors).

Accepted key names: ``emb.N.weight``, ``proj.N.weight``, ``head.N.weight``, ``ln.N.weight``,
``ln.N.bias``, with or without a ``speculator.`` prefix. Tied checkpoints may store only one copy of
each shared weight (emb.0, head.0, ln.0, proj.0, proj.1). Our extensions, declared in config.json and
ignored by other engines only if absent: ``head_vocab_size`` with a ``vocab_map`` tensor (heads over
the most frequent tokens only), and the compact form ``borrow_base_embedding`` / ``borrow_base_head``
(the tensors are not stored; the base model's are copied in at load time).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig


class SpeculatorLoadError(Exception):
    pass


def read_config(path: Path) -> dict[str, Any]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise SpeculatorLoadError(f"{path}: no config.json (expected an MLP speculator folder)")
    try:
        return dict(json.loads(config_path.read_text()))
    except json.JSONDecodeError as exc:
        raise SpeculatorLoadError(f"{config_path}: malformed JSON ({exc.msg})") from None


def config_from_dict(raw: dict[str, Any]) -> MLPSpeculatorConfig:
    try:
        n_predict = int(raw["n_predict"])
        top_k = raw.get("top_k_tokens_per_head") or [1] * n_predict
        return MLPSpeculatorConfig(
            emb_dim=int(raw["emb_dim"]), vocab_size=int(raw["vocab_size"]), n_predict=n_predict,
            inner_dim=int(raw.get("inner_dim", 0) or 0), tie_weights=bool(raw.get("tie_weights", False)),
            scale_input=bool(raw.get("scale_input", False)),
            top_k_tokens_per_head=tuple(int(k) for k in top_k),
            n_candidates=int(raw.get("n_candidates", 1) or 1),
            head_vocab_size=int(raw.get("head_vocab_size", 0) or 0),
            num_lookahead_tokens=int(raw.get("num_lookahead_tokens", 0) or 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpeculatorLoadError(f"invalid MLP speculator config: {exc}") from None


def load_mlp_speculator(path: str | Path, base_embedding: torch.Tensor | None = None,
                        base_head: torch.Tensor | None = None,
                        num_lookahead_tokens: int | None = None) -> MLPSpeculator:
    """Build the speculator from a folder; base tensors are needed only for the compact form.

    ``num_lookahead_tokens`` overrides the config's: a tied speculator runs that many stages (its last
    stage repeated past n_predict); an untied one at most n_predict.
    """
    path = Path(path)
    raw = read_config(path)
    config = config_from_dict(raw)
    if num_lookahead_tokens is not None and num_lookahead_tokens > 0:
        lookahead = num_lookahead_tokens if config.tie_weights else min(num_lookahead_tokens, config.n_predict)
        config = replace(config, num_lookahead_tokens=lookahead)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise SpeculatorLoadError(f"{path}: no *.safetensors file")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, value in load_file(str(file)).items():
            state[key.removeprefix("speculator.")] = value
    model = MLPSpeculator(config)
    if config.head_vocab_size:
        if "vocab_map" not in state:
            raise SpeculatorLoadError(f"{path}: head_vocab_size is set but no vocab_map tensor is stored")
        model.vocab_map = state.pop("vocab_map").long()
    if raw.get("borrow_base_embedding"):
        if base_embedding is None:
            raise SpeculatorLoadError(f"{path}: compact checkpoint needs the base model's embedding")
        for i in range(config.n_predict):
            state.setdefault(f"emb.{i}.weight", base_embedding)
    if raw.get("borrow_base_head"):
        if base_head is None:
            raise SpeculatorLoadError(f"{path}: compact checkpoint needs the base model's LM head")
        head = base_head if model.vocab_map is None else base_head[model.vocab_map]
        for i in range(config.n_predict):
            state.setdefault(f"head.{i}.weight", head)
    if config.tie_weights:  # fill shared names from the one stored copy
        for i in range(1, config.n_predict):
            for name, src in (("emb", 0), ("head", 0), ("ln", 0)):
                for suffix in ("weight", "bias") if name == "ln" else ("weight",):
                    key = f"{name}.{src}.{suffix}"
                    if key in state:
                        state.setdefault(f"{name}.{i}.{suffix}", state[key])
            if i >= 2 and "proj.1.weight" in state:
                state.setdefault(f"proj.{i}.weight", state["proj.1.weight"])
    expected = set(model.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise SpeculatorLoadError(f"{path}: checkpoint does not match its config "
                                  f"(missing {missing[:4]}, unexpected {unexpected[:4]})")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.shape != shapes[key]:
            raise SpeculatorLoadError(f"{path}: {key} has shape {tuple(value.shape)}, "
                                      f"config implies {tuple(shapes[key])}")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    if config.tie_weights:
        model.tie()
    return model


def save_mlp_speculator(model: MLPSpeculator, path: str | Path, compact: bool = False,
                        extra_config: dict[str, Any] | None = None) -> None:
    """Write IBM's format; ``compact`` leaves out embeddings and heads (borrowed from the base model)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = model.config
    config: dict[str, Any] = {
        "architectures": ["MLPSpeculatorPreTrainedModel"], "model_type": "mlp_speculator",
        "emb_dim": c.emb_dim, "inner_dim": c.inner_dim, "vocab_size": c.vocab_size,
        "n_predict": c.n_predict, "top_k_tokens_per_head": list(c.top_k_tokens_per_head),
        "n_candidates": c.n_candidates, "tie_weights": c.tie_weights, "scale_input": c.scale_input,
    }
    if c.head_vocab_size:
        config["head_vocab_size"] = c.head_vocab_size
    if c.num_lookahead_tokens:
        config["num_lookahead_tokens"] = c.num_lookahead_tokens
    if compact:
        config["borrow_base_embedding"] = True
        config["borrow_base_head"] = True
    config.update(extra_config or {})
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        if compact and (key.startswith("emb.") or key.startswith("head.")):
            continue
        if isinstance(value, nn.Parameter) and id(value) in seen:
            continue  # a tied weight: store only its first copy
        seen.add(id(value))
        tensors[key] = value.detach().contiguous().clone()
    if model.vocab_map is not None:
        tensors["vocab_map"] = model.vocab_map.to(torch.int64).contiguous()
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
