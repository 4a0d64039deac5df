"""Frozen configuration dataclasses shared by the engine's parts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_memory(text: str | int) -> int:
    """'2GiB' / '512MiB' / '1e9' / 1073741824 -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot parse memory size {text!r}; use e.g. '2GiB' or '512MiB'")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"memory size must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    kv_cache_memory: int = 1024**3  # bytes for K and V of all layers
    num_blocks: int | None = None  # overrides the memory budget (tests use tiny pools)
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        if self.num_blocks is not None and self.num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 1024  # token budget per step (prefill chunks + decode + speculation)
    max_num_seqs: int = 64  # running requests at once
    max_model_len: int | None = None  # None = the model's max_position_embeddings

    def __post_init__(self) -> None:
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be >= 1")


@dataclass(frozen=True)
class SpecConfig:
    # None/"none" | "ngram" | "default" | PATH | "mlp:PATH" | "medusa:PATH" | "draft:PATH", each optionally
    # followed by "+ngram" (prompt lookup first where the output repeats an n-gram, the speculator elsewhere)
    speculator: str | None = None
    speculation: str = "auto"  # "auto" (adaptive) | "on" | "off"
    num_speculative_tokens: int | None = None  # max draft depth; None = the speculator's own
    num_candidates: int | None = None  # max candidate paths; None = the speculator's own
    # second-best tokens verified beside each single chain (spec/siblings.py; MLP speculator, Medusa);
    # None = siblings.default_chain_siblings (1 on a CPU, 0 elsewhere)
    chain_siblings: int | None = None

    def __post_init__(self) -> None:
        if self.speculation not in ("auto", "on", "off"):
            raise ValueError(f"speculation must be auto, on or off, got {self.speculation!r}")
        if self.num_speculative_tokens is not None and self.num_speculative_tokens < 0:
            raise ValueError("num_speculative_tokens must be >= 0")
        if self.num_candidates is not None and self.num_candidates < 1:
            raise ValueError("num_candidates must be >= 1")
        if self.chain_siblings is not None and self.chain_siblings < 0:
            raise ValueError("chain_siblings must be >= 0")

    @property
    def enabled(self) -> bool:
        return self.speculator not in (None, "", "none")


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # None = the embedded default (SmolLM2-135M-Instruct GGUF)
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    spec: SpecConfig = field(default_factory=SpecConfig)
    tensor_parallel_size: int = 1  # ranks sharing each layer (specserve/distributed/); KV budget is per rank
    cuda_graphs: bool = False  # replay plain decode steps as CUDA graphs (worker/cuda_graphs.py); CUDA only

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if isinstance(self.tensor_parallel_size, bool) or not isinstance(self.tensor_parallel_size, int) \
                or self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be an integer >= 1, got {self.tensor_parallel_size!r}")
        if self.cuda_graphs and not self.device.startswith("cuda"):
            raise ValueError(f"cuda_graphs needs device 'cuda', got {self.device!r}")
        if self.cuda_graphs and self.tensor_parallel_size > 1:
            raise ValueError("cuda_graphs is not supported with tensor parallelism")
