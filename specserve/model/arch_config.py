"""ModelArchConfig: the model shape and numerics, read from an HF config.json (+ generation_config.json).

Family differences (Llama, Mistral, Qwen2, Granite) become plain fields here so one implementation
serves them all. GPTBigCode (StarCoder, Granite code 20B/34B) has its own key names and is read by
`_gpt_bigcode`; its class (model/gpt_bigcode.py) ignores the rope fields. Defaults follow the
transformers config classes, because `save_pretrained` may omit keys that equal them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from specserve.model.registry import MODEL_TYPE_TO_ARCH

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    # llama3
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0  # 0 = use max_position_embeddings
    # yarn
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelArchConfig:
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float  # the epsilon of the family's norm (LayerNorm's for GPTBigCode)
    rope: RopeConfig
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: list[int] = field(default_factory=list)
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    # Granite 3.x multipliers (1.0 elsewhere); attention_multiplier None means 1/sqrt(head_dim)
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: float | None = None
    logits_scaling: float = 1.0
    # Mistral/Qwen2 sliding window: recorded but not applied (exact only for contexts <= window).
    sliding_window: int | None = None
    torch_dtype: str | None = None
    hidden_act: str = "silu"  # GPTBigCode: gelu (exact) or a tanh approximation

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attn_scale(self) -> float:
        if self.attention_multiplier is not None:
            return self.attention_multiplier
        return 1.0 / math.sqrt(self.head_dim)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], generation_config: dict[str, Any] | None = None
                       ) -> ModelArchConfig:
        if not isinstance(config, dict):
            raise ValueError(f"config must be a JSON object, got {type(config).__name__}")
        model_type = config.get("model_type")
        architecture = _architecture(config, model_type)
        if model_type == "gpt_bigcode" or (model_type is None and architecture == "GPTBigCodeForCausalLM"):
            return _gpt_bigcode(cls, config, generation_config or {})
        if model_type is None:
            model_type = {v: k for k, v in MODEL_TYPE_TO_ARCH.items()}.get(architecture, "llama")
        hidden_size = _pos_int(config, "hidden_size")
        num_heads = _pos_int(config, "num_attention_heads")
        num_kv_heads = _pos_int(config, "num_key_value_heads", num_heads)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads ({num_heads}) is not a multiple of "
                             f"num_key_value_heads ({num_kv_heads})")
        head_dim = config.get("head_dim")
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size ({hidden_size}) is not divisible by "
                                 f"num_attention_heads ({num_heads}) and head_dim is not given")
            head_dim = hidden_size // num_heads
        head_dim = _pos_int({"head_dim": head_dim}, "head_dim")  # checks a given head_dim too
        act = config.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act {act!r} is not supported (only silu)")
        max_pos = _pos_int(config, "max_position_embeddings", _DEFAULT_MAX_POS.get(model_type, 2048))
        granite = model_type == "granite"
        qwen2 = model_type == "qwen2"
        attention_bias = bool(config.get("attention_bias", False))
        sliding = config.get("sliding_window")
        if qwen2 and not config.get("use_sliding_window", False):
            sliding = None
        return cls(
            architecture=architecture,
            model_type=model_type,
            num_layers=_pos_int(config, "num_hidden_layers"),
            hidden_size=hidden_size,
            intermediate_size=_pos_int(config, "intermediate_size"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            vocab_size=_pos_int(config, "vocab_size"),
            max_position_embeddings=max_pos,
            rms_norm_eps=_float(config, "rms_norm_eps", 1e-6),
            rope=_rope(config, max_pos),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=_opt_int(config, "bos_token_id"),
            eos_token_ids=_eos_ids(config, generation_config or {}),
            qkv_bias=True if qwen2 else attention_bias,
            o_bias=False if qwen2 else attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            embedding_multiplier=_float(config, "embedding_multiplier", 1.0) if granite else 1.0,
            residual_multiplier=_float(config, "residual_multiplier", 1.0) if granite else 1.0,
            attention_multiplier=_float(config, "attention_multiplier", 1.0) if granite else None,
            logits_scaling=_float(config, "logits_scaling", 1.0) if granite else 1.0,
            sliding_window=int(sliding) if sliding else None,
            torch_dtype=config.get("torch_dtype") or config.get("dtype"),
        )


_DEFAULT_MAX_POS = {"llama": 2048, "granite": 2048, "mistral": 131072, "qwen2": 32768}

GELU_ACTS = ("gelu", "gelu_pytorch_tanh", "gelu_new", "gelu_fast")  # exact, then three tanh forms


def _gpt_bigcode(cls: type[ModelArchConfig], config: dict[str, Any], generation_config: dict[str, Any]
                 ) -> ModelArchConfig:
    """GPTBigCode keys (n_embd, n_layer, n_head, n_positions, n_inner, multi_query); defaults as in
    transformers' GPTBigCodeConfig. Biases everywhere, LayerNorm, learned absolute positions."""
    config = {"bos_token_id": 50256, "eos_token_id": 50256, **config}
    hidden_size = _pos_int(config, "n_embd", config.get("hidden_size", 768))
    num_heads = _pos_int(config, "n_head", config.get("num_attention_heads", 12))
    if hidden_size % num_heads:
        raise ValueError(f"n_embd ({hidden_size}) is not divisible by n_head ({num_heads})")
    if config.get("add_cross_attention"):
        raise ValueError("GPTBigCode with cross-attention is not supported")
    act = config.get("activation_function", "gelu_pytorch_tanh")
    if act not in GELU_ACTS:
        raise ValueError(f"activation_function {act!r} is not supported (supported: {', '.join(GELU_ACTS)})")
    n_inner = config.get("n_inner")
    return cls(
        architecture=_architecture(config, "gpt_bigcode"),
        model_type="gpt_bigcode",
        num_layers=_pos_int(config, "n_layer", config.get("num_hidden_layers", 12)),
        hidden_size=hidden_size,
        intermediate_size=_pos_int({"n_inner": n_inner or 4 * hidden_size}, "n_inner"),
        num_heads=num_heads,
        num_kv_heads=1 if config.get("multi_query", True) else num_heads,
        head_dim=hidden_size // num_heads,
        vocab_size=_pos_int(config, "vocab_size", 50257),
        max_position_embeddings=_pos_int(config, "n_positions", config.get("max_position_embeddings", 1024)),
        rms_norm_eps=_float(config, "layer_norm_epsilon", 1e-5),
        rope=RopeConfig(),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        bos_token_id=_opt_int(config, "bos_token_id"),
        eos_token_ids=_eos_ids(config, generation_config),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        attention_multiplier=None if config.get("scale_attn_weights", True) else 1.0,
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
        hidden_act=act,
    )


def _architecture(config: dict[str, Any], model_type: str | None) -> str:
    archs = config.get("architectures")
    if archs:
        if not isinstance(archs, list) or not isinstance(archs[0], str):
            raise ValueError(f"architectures must be a list of names, got {archs!r}")
        return archs[0]
    if model_type in MODEL_TYPE_TO_ARCH:
        return MODEL_TYPE_TO_ARCH[model_type]
    raise ValueError(f"config has no 'architectures' and an unknown model_type {model_type!r}")


def _pos_int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"config is missing {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config {key!r} must be a positive integer, got {value!r}")
    return value


def _opt_int(config: dict[str, Any], key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, list):  # some configs list several ids; the first is the canonical one
        value = value[0] if value else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"config {key!r} must be an integer, got {value!r}")
    return value


def _float(config: dict[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"config {key!r} must be a finite number, got {value!r}")
    return float(value)


def _eos_ids(config: dict[str, Any], generation_config: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for source in (config, generation_config):
        value = source.get("eos_token_id")
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is None:
                continue
            if isinstance(token_id, bool) or not isinstance(token_id, int):
                raise ValueError(f"eos_token_id must be an integer or a list of integers, got {value!r}")
            if token_id not in ids:
                ids.append(token_id)
    return ids


def _rope(config: dict[str, Any], max_pos: int) -> RopeConfig:
    # transformers 5 writes `rope_parameters`; older files use `rope_theta` + `rope_scaling`.
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"rope_scaling must be an object, got {params!r}")
    if params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError("per-layer-type rope parameters are not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    theta = _float(params, "rope_theta", _float(config, "rope_theta", 10000.0))
    original = params.get("original_max_position_embeddings",
                          config.get("original_max_position_embeddings", max_pos))
    factor = params.get("factor")
    if rope_type != "default" and factor is None:
        if rope_type == "yarn":  # yarn may derive the factor from the two context lengths
            factor = max_pos / original
        else:
            raise ValueError(f"rope type {rope_type!r} needs a 'factor'")
    rope = RopeConfig(
        rope_type=rope_type,
        theta=theta,
        factor=_float({"rope factor": factor}, "rope factor", 1.0),
        low_freq_factor=_float(params, "low_freq_factor", 1.0),
        high_freq_factor=_float(params, "high_freq_factor", 4.0),
        original_max_position_embeddings=_pos_int(
            {"original_max_position_embeddings": original}, "original_max_position_embeddings"),
        beta_fast=_float(params, "beta_fast", 32.0) or 32.0,
        beta_slow=_float(params, "beta_slow", 1.0) or 1.0,
        attention_factor=params.get("attention_factor"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=bool(params.get("truncate", True)),
    )
    if rope_type == "llama3" and rope.high_freq_factor == rope.low_freq_factor:
        raise ValueError("llama3 rope needs high_freq_factor != low_freq_factor")
    return rope
