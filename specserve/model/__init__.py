"""Model package: Llama-family and GPTBigCode decoders on a paged KV cache, config, loading, GGUF import."""

from __future__ import annotations

from specserve.model.arch_config import ModelArchConfig, RopeConfig
from specserve.model.loader import ModelLoadError, default_model_gguf, load_model, resolve_model_dir
from specserve.model.registry import get_model_class, supported_architectures

__all__ = [
    "ModelArchConfig",
    "ModelLoadError",
    "RopeConfig",
    "default_model_gguf",
    "get_model_class",
    "load_model",
    "resolve_model_dir",
    "supported_architectures",
]
