"""specserve: speculative decoding on a paged KV cache with continuous batching."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]

if TYPE_CHECKING:
    from specserve.engine.llm import LLM
    from specserve.outputs import CompletionOutput, RequestOutput
    from specserve.sampling_params import SamplingParams


def __getattr__(name: str) -> Any:
    # Lazy so that `import specserve` (e.g. for the CLI's --help) does not pull in torch.
    if name == "LLM":
        from specserve.engine.llm import LLM
        return LLM
    if name == "SamplingParams":
        from specserve.sampling_params import SamplingParams
        return SamplingParams
    if name in ("RequestOutput", "CompletionOutput"):
        from specserve import outputs
        return getattr(outputs, name)
    raise AttributeError(name)
