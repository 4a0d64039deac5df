"""The same single-request runs through llama.cpp (``llama-cpp-python``), when it is installed.

It reads GGUF files only, at the file's own precision (the default model's GGUF is Q4_1, while specserve
and transformers run it dequantized): compare its figures knowing that. Install (builds from source,
about 10 minutes on 2 cores): ``CMAKE_ARGS=-DGGML_NATIVE=ON pip install llama-cpp-python``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def llama_cpp_problem(model: str | None) -> tuple[Path | None, str | None]:
    """(the GGUF to load, None) or (None, why llama.cpp is skipped)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None, "llama.cpp skipped: llama-cpp-python is not installed"
    if model is None:
        from specserve.model.loader import default_model_gguf

        return default_model_gguf(), None
    if model.lower().endswith(".gguf"):
        return Path(model), None
    return None, "llama.cpp skipped: it needs a .gguf file as --model"


def load_llama(gguf: Path, threads: int, prompt_lookup: int | None = None) -> Any:
    from llama_cpp import Llama

    draft = None
    if prompt_lookup:
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        draft = LlamaPromptLookupDecoding(num_pred_tokens=prompt_lookup)
    return Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                 verbose=False, draft_model=draft)


def llama_single_decode(llm: Any, prompt_text: str, max_tokens: int) -> tuple[float, float]:
    """(decode tokens/s, seconds to the first token); greedy, exactly max_tokens tokens (EOS ignored)."""
    tokens = llm.tokenize(prompt_text.encode("utf-8"), add_bos=False, special=True)
    start = time.perf_counter()
    first = last = start
    count = 0
    for _ in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
        if count >= max_tokens:
            break
    decode_s = last - first
    return ((count - 1) / decode_s if decode_s > 0 else float("nan")), first - start
