"""Which model class serves which HF `architectures` name.

One module per family: Llama, Mistral, Qwen2 and Granite share the Llama implementation (their
differences are config flags); a family with different blocks (e.g. GPTBigCode) gets its own file and
one line here. Classes are imported lazily so reading a config never imports torch modules it does not use.
"""

from __future__ import annotations

import importlib

from torch import nn

# architecture name -> (module, class name)
_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("specserve.model.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("specserve.model.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("specserve.model.llama", "LlamaForCausalLM"),
    "GraniteForCausalLM": ("specserve.model.llama", "LlamaForCausalLM"),
    "GPTBigCodeForCausalLM": ("specserve.model.gpt_bigcode", "GPTBigCodeForCausalLM"),
}

# config.json `model_type` -> architecture, for configs that omit `architectures`
MODEL_TYPE_TO_ARCH: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "granite": "GraniteForCausalLM",
    "gpt_bigcode": "GPTBigCodeForCausalLM",
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {', '.join(supported_architectures())}")
    module_name, class_name = _MODELS[architecture]
    cls: type[nn.Module] = getattr(importlib.import_module(module_name), class_name)
    return cls
