"""Suite-wide fixtures: the default model loaded once, tiny random models with a real tokenizer, and
the rule that after every test each engine has every KV block free and its accounting intact."""

from __future__ import annotations

import os
import shutil
import time
import weakref
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Imported GGUF models are reused across runs (CI starts from a clean clone anyway).
os.environ.setdefault("SPECSERVE_HOME", str(REPO / ".cache" / "specserve"))

import torch  # noqa: E402

from specserve.engine.engine import LLMEngine  # noqa: E402

# One intra-op thread: the suite runs engine threads, servers and clients side by side on two cores,
# where multi-threaded kernels stall waiting for a descheduled worker (measured: up to 25x slower).
torch.set_num_threads(1)

_engines: weakref.WeakSet[LLMEngine] = weakref.WeakSet()
_original_init = LLMEngine.__init__


def _tracking_init(self: LLMEngine, *args: object, **kwargs: object) -> None:
    _original_init(self, *args, **kwargs)  # type: ignore[arg-type]
    _engines.add(self)


LLMEngine.__init__ = _tracking_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def kv_blocks_all_free_after_test():
    yield
    for engine in list(_engines):
        deadline = time.monotonic() + 10
        while engine.has_unfinished_requests() and time.monotonic() < deadline:
            time.sleep(0.05)  # an async engine may still be processing aborts
        assert not engine.has_unfinished_requests(), "requests left unfinished after the test"
        assert engine.kv.num_used_blocks == 0, f"{engine.kv.num_used_blocks} KV blocks leaked"
        engine.check_integrity()


@pytest.fixture(scope="session")
def default_bundle():
    from specserve.engine.model_setup import load_bundle

    return load_bundle(None, "float32")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory, default_bundle) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer (so prompts and chat templates work)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    out = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=default_bundle.arch.vocab_size,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         eos_token_id=default_bundle.eos_token_ids[0], bos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = default_bundle.model_dir / name
        if src.exists():
            shutil.copy(src, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llama_dir: Path):
    from specserve.engine.model_setup import load_bundle

    return load_bundle(str(tiny_llama_dir), "float32")
