"""Import a llama.cpp GGUF file as an HF-format folder (config, float32 safetensors, tokenizer).

Weights are dequantized to float32 (the serving dtype is applied at load). llama.cpp's converter
permutes the rows of q_proj/k_proj of `llama`-architecture files so rope pairs adjacent elements;
we undo that so the interleave matches HF's rotate-half rope. Qwen2 files are not permuted.
The config is read from the GGUF metadata with the same key table as transformers' GGUF loader; the
tokenizer comes from transformers' GGUF tokenizer conversion (transformers is used only here, at import).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specserve.model.arch_config import ModelArchConfig
from specserve.model.registry import MODEL_TYPE_TO_ARCH

# GGUF architectures we can import, and whether llama.cpp permuted their q/k rows.
_SUPPORTED_ARCHS = {"llama": True, "qwen2": False}
_MAX_SHARD_BYTES = 2 << 30

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# Tensors llama.cpp adds that HF checkpoints do not carry (rope factors live in the config there).
_SKIPPED = {"rope_freqs.weight"}


class GGUFImportError(ValueError):
    """The GGUF file cannot be read or is not one we can import."""


def hf_tensor_name(gguf_name: str) -> str | None:
    """GGUF tensor name -> HF name; None for tensors to drop; GGUFImportError for unknown ones."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    if gguf_name in _SKIPPED:
        return None
    match = _LAYER_RE.fullmatch(gguf_name)
    if match is None or match.group(2) not in _PER_LAYER:
        raise GGUFImportError(f"unknown GGUF tensor {gguf_name!r}")
    layer, part, kind = match.groups()
    return f"model.layers.{layer}.{_PER_LAYER[part]}.{kind}"


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: per head, rows (pair i, half j) go back to (half j, pair i)."""
    shape = w.shape
    return w.reshape(num_heads, shape[0] // num_heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_hf_folder(gguf_path: Path, out_dir: Path) -> None:
    """Write config.json, generation_config.json, tokenizer files and safetensors shards into out_dir."""
    import gguf

    try:
        reader = gguf.GGUFReader(gguf_path)
        arch = str(reader.fields["general.architecture"].contents())
    except Exception as e:  # the reader raises assorted errors on a truncated or foreign file
        raise GGUFImportError(f"not a readable GGUF file ({type(e).__name__}: {e})") from e
    if arch not in _SUPPORTED_ARCHS:
        raise GGUFImportError(f"GGUF architecture {arch!r} is not supported "
                              f"(supported: {', '.join(sorted(_SUPPORTED_ARCHS))})")
    config = _write_config(reader, arch, out_dir)
    try:  # fail now rather than cache an import that can never load
        ModelArchConfig.from_hf_config(config)
    except ValueError as e:
        raise GGUFImportError(f"unusable model config ({e})") from e
    _write_tokenizer(gguf_path, reader, out_dir)
    permuted = _SUPPORTED_ARCHS[arch]
    _write_weights(reader, out_dir, config if permuted else None)


# GGUF metadata key (after the "<arch>." prefix) -> HF config key; same table as transformers' GGUF loader.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_TOKEN_ID_KEYS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
                  "unknown_token_id": "unk_token_id", "padding_token_id": "pad_token_id"}


def hf_config_dict(reader: Any, arch: str) -> dict[str, Any]:
    """The HF config for a GGUF, from its metadata (read directly: transformers' AutoConfig path
    parses the whole vocabulary first, which costs seconds)."""
    fields = reader.fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    config: dict[str, Any] = {}
    for gguf_key, hf_key in _CONFIG_KEYS.items():
        if (v := value(f"{arch}.{gguf_key}")) is not None:
            config[hf_key] = v
    if arch == "llama" and (v := value("llama.rope.dimension_count")) is not None:
        config["head_dim"] = v  # the rotary width equals head_dim for llama files
    for gguf_key, hf_key in _TOKEN_ID_KEYS.items():
        if (v := value(f"tokenizer.ggml.{gguf_key}")) is not None:
            config[hf_key] = v
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in fields:
        config["vocab_size"] = len(fields["tokenizer.ggml.tokens"].data)
    # llama.cpp writes the output projection only when it is not the embedding matrix
    config["tie_word_embeddings"] = all(t.name != "output.weight" for t in reader.tensors)
    if isinstance(config.get("num_key_value_heads"), list):
        raise GGUFImportError("per-layer attention.head_count_kv is not supported")
    if value(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise GGUFImportError("GGUF rope scaling metadata is not supported yet")
    return config


def _write_config(reader: Any, arch: str, out_dir: Path) -> dict[str, Any]:
    from transformers import AutoConfig

    raw = hf_config_dict(reader, arch)
    # Round-trip through the transformers config class for the canonical config.json layout.
    config = AutoConfig.for_model(arch, **raw).to_diff_dict()
    config["architectures"] = [MODEL_TYPE_TO_ARCH[arch]]
    config["dtype"] = "float32"  # what the safetensors hold; the serving dtype is chosen at load
    config.pop("_name_or_path", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = {k: raw[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                  if raw.get(k) is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return config | raw


def _write_tokenizer(gguf_path: Path, reader: Any, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    if "tokenizer.ggml.tokens" not in reader.fields:
        raise GGUFImportError("GGUF file has no tokenizer")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as e:  # transformers' converter fails with assorted errors on vocabularies it lacks
        raise GGUFImportError(f"cannot convert the GGUF tokenizer ({type(e).__name__}: {e})") from e
    tokenizer.save_pretrained(str(out_dir))
    # Keep one source of truth for the chat template and the BOS/EOS flags: tokenizer_config.json.
    config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    for junk in ("is_local", "local_files_only", "name_or_path"):
        tok_config.pop(junk, None)
    if tokenizer.chat_template:
        tok_config["chat_template"] = tokenizer.chat_template
    for flag in ("add_bos_token", "add_eos_token"):
        field = reader.fields.get(f"tokenizer.ggml.{flag}")
        from_file = field.contents() if field is not None else getattr(tokenizer, flag, False)
        tok_config[flag] = bool(from_file)
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)


def _write_weights(reader: Any, out_dir: Path, permute_config: dict[str, Any] | None) -> None:
    """Dequantize every tensor to float32; shards of ~2 GiB are written as they fill to bound memory."""
    from gguf.quants import dequantize
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0

    def flush() -> None:
        file_name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(out_dir / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file_name))

    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is None:
            continue
        w = dequantize(tensor.data, tensor.tensor_type)
        w = w.reshape(tuple(int(d) for d in reversed(tensor.shape)))  # GGUF lists dims fastest-first
        if permute_config is not None and (".q_proj." in name or ".k_proj." in name):
            key = "num_attention_heads" if ".q_proj." in name else "num_key_value_heads"
            w = unpermute_rope_rows(w, permute_config[key])
        t = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))  # a copy: F32 data is a read-only map
        if shard and shard_bytes + t.nbytes > _MAX_SHARD_BYTES:
            flush()
            shard, shard_bytes = {}, 0
        shard[name] = t
        shard_bytes += t.nbytes
    if not weight_map:  # everything fits in one file: the plain single-file layout
        save_file(shard, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    flush()
    index = {"metadata": {}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
