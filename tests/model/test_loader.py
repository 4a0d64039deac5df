"""Loader: the default SmolLM2 GGUF imported and checked against transformers' own GGUF loading; errors."""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from specserve.model import ModelLoadError, default_model_gguf, load_model, loader, resolve_model_dir
from specserve.tokenizer import Tokenizer

CPU = torch.device("cpu")

CHATS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name three primes.\nOnly digits, please!"},
     {"role": "assistant", "content": "2, 3, 5"},
     {"role": "user", "content": "  And the next one?  "}],
    [{"role": "user", "content": "Übersetze: naïve café — 東京 🚀 <|im_end|> tabs\tand\n\nlines"}],
]
TEXTS = ["Hello world", " leading space", "code:\n    return x  # done", "<|im_start|>user\nhi<|im_end|>",
         "numbers 1234567 and 3.14159", "", "Ünïcödé 東京 🚀"]


@pytest.fixture(scope="session")
def specserve_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("specserve_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPECSERVE_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def smol_dir(specserve_home: Path) -> Path:
    return resolve_model_dir(None)


@pytest.fixture(scope="session")
def hf_gguf_model(smol_dir: Path) -> torch.nn.Module:
    """transformers' GGUF loading, as `from_pretrained(gguf_file=...)` does it for llama files (its legacy
    dequantizing path), called directly: half the time, and no `accelerate` gate. Our import supplies only
    the parameter names; config and tensors come from transformers' reading of the GGUF itself."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(smol_dir)))
    with pytest.MonkeyPatch.context() as mp:
        # transformers rebuilds the same name table once per submodule (~400x); memoising it saves seconds
        mp.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
        parsed = load_gguf_checkpoint(str(default_model_gguf()), return_tensors=True, model_to_load=skeleton)
    config_dict = dict(parsed["config"])
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    with torch.device("meta"):  # skip random init (seconds): every weight is assigned below
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False, assign=True)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # the head is tied to the embedding
    model.tie_weights()
    # Derived buffers (rope inv_freq) are not in any checkpoint: rebuild their modules for real.
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config))
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


@pytest.fixture(scope="session")
def hf_gguf_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = default_model_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_default_gguf_is_found() -> None:
    path = default_model_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_import_layout_and_cache(smol_dir: Path, specserve_home: Path) -> None:
    assert smol_dir.parent == specserve_home / "models"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (smol_dir / name).is_file(), name
    assert "chat_template" in json.loads((smol_dir / "tokenizer_config.json").read_text())
    assert resolve_model_dir(None) == smol_dir  # second call reuses the import
    assert resolve_model_dir(str(default_model_gguf())) == smol_dir
    assert resolve_model_dir(str(smol_dir)) == smol_dir
    assert [p.name for p in smol_dir.parent.iterdir()] == [smol_dir.name]  # no temp folders left


def test_gguf_weights_equal_transformers(smol_dir: Path, hf_gguf_model: torch.nn.Module) -> None:
    ours = load_file(str(smol_dir / "model.safetensors"))
    ref = hf_gguf_model.state_dict()
    assert set(ours) == set(ref) - {"lm_head.weight"}  # tied: the head is the embedding
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, ref[name]), name


def test_gguf_config_matches_transformers(smol_dir: Path, hf_gguf_model: torch.nn.Module) -> None:
    arch = loader.read_arch_config(smol_dir)
    cfg = hf_gguf_model.config
    ours = (arch.num_layers, arch.hidden_size, arch.num_heads, arch.num_kv_heads, arch.head_dim)
    assert ours == (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                    cfg.num_key_value_heads, cfg.head_dim)
    assert arch.rope.theta == cfg.rope_parameters["rope_theta"]
    assert arch.rms_norm_eps == cfg.rms_norm_eps and arch.tie_word_embeddings
    assert arch.eos_token_ids == [2] and arch.bos_token_id == 1


def test_gguf_logits_match_transformers(smol_dir: Path, hf_gguf_model: torch.nn.Module,
                                        paged_driver: type[Any]) -> None:
    tok = Tokenizer.from_dir(smol_dir)
    prompt = tok.encode(tok.apply_chat_template(CHATS[1]))
    continuation = tok.encode("The next prime is 7.", add_special_tokens=False)
    seq = prompt + continuation
    with torch.no_grad():
        ref = hf_gguf_model(torch.tensor([seq])).logits[0]
    model, _ = load_model(smol_dir, torch.float32, CPU)
    driver = paged_driver(model, num_blocks=64, block_size=16, seed=5)
    # the prompt as one prefill (other requests' blocks interleaved), then decode token by token
    chunks = [(0, len(prompt))] + [(i, i + 1) for i in range(len(prompt), len(seq))]
    for step, (start, end) in enumerate(chunks):
        batch = [("chat", seq[start:end])]
        if step % 2:
            batch.append((f"other{step}", seq[:5]))  # a second request sharing the flat batch
        logits = driver.step(batch)["chat"]
        expected = ref[start:end]
        assert float((logits - expected).abs().max() / expected.abs().max()) <= 1e-4, (start, end)


def test_tokenizer_matches_transformers(smol_dir: Path, hf_gguf_tokenizer: Any) -> None:
    from transformers import AutoTokenizer

    ours = Tokenizer.from_dir(smol_dir)
    from_folder = AutoTokenizer.from_pretrained(str(smol_dir))
    for ref in (hf_gguf_tokenizer, from_folder):
        assert (ours.bos_token_id, ours.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
        assert set(ref.all_special_ids) <= set(ours.all_special_ids)
        for text in TEXTS:
            ids = ref.encode(text)
            assert ours.encode(text) == ids, text
            assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
            assert ours.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        for chat in CHATS:
            for gen in (True, False):
                text = ours.apply_chat_template(chat, add_generation_prompt=gen)
                assert text == ref.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False)
    assert ours.vocab_size == len(hf_gguf_tokenizer)
    assert ours.encode("hi") == hf_gguf_tokenizer.encode("hi")  # no BOS: the GGUF says add_bos_token=false


def test_tokenizer_without_chat_template(smol_dir: Path, tmp_path: Path) -> None:
    shutil.copy(smol_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    tok = Tokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="chat template"):
        tok.apply_chat_template(CHATS[0])


def assert_load_error(exc: pytest.ExceptionInfo[ModelLoadError], path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message and "\n" not in message


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelLoadError) as exc:
        resolve_model_dir(str(missing))
    assert_load_error(exc, missing)


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json") as exc:
        resolve_model_dir(str(tmp_path))
    assert_load_error(exc, tmp_path)


@pytest.mark.parametrize("content", ["{not json", '{"architectures": ["LlamaForCausalLM"]}', "[1, 2]",
                                     '{"architectures": ["BertModel"], "hidden_size": 8}'])
def test_bad_config(tmp_path: Path, content: str) -> None:
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model_dir(str(tmp_path))
    assert_load_error(exc, tmp_path)
    with pytest.raises(ModelLoadError):
        load_model(tmp_path, torch.float32, CPU)


def test_config_without_weights(tmp_path: Path, smol_dir: Path) -> None:
    shutil.copy(smol_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelLoadError, match="safetensors") as exc:
        resolve_model_dir(str(tmp_path))
    assert_load_error(exc, tmp_path)


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00" + b"\xff" * 64, b"not a gguf at all" * 10])
def test_corrupt_gguf(tmp_path: Path, specserve_home: Path, content: bytes) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError) as exc:
        resolve_model_dir(str(bad))
    assert_load_error(exc, bad)
    assert not any(p.name.startswith(".tmp-") for p in (specserve_home / "models").iterdir())


def test_interrupted_import_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECSERVE_HOME", str(tmp_path / "home"))

    def crash(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")  # half-written folder
        raise KeyboardInterrupt

    monkeypatch.setattr("specserve.model.gguf_import.write_hf_folder", crash)
    with pytest.raises(KeyboardInterrupt):
        loader.import_gguf(default_model_gguf())
    assert list((tmp_path / "home" / "models").iterdir()) == []


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_roundtrip(arch: str, tmp_path: Path, specserve_home: Path, save_tiny: Any, tiny_gguf: Any,
                             paged_driver: type[Any]) -> None:
    """A float32 GGUF written llama.cpp-style from a tiny HF model imports back to the same logits
    (llama: q/k rows un-permuted; qwen2: not permuted, q/k/v biases kept)."""
    from transformers import LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    hf = save_tiny(config_cls, tmp_path / "hf", tie_word_embeddings=arch == "qwen2")
    gguf_path = tmp_path / f"tiny-{arch}.gguf"
    tiny_gguf(hf, gguf_path, arch)
    model_dir = resolve_model_dir(str(gguf_path))
    model, model_arch = load_model(model_dir, torch.float32, CPU)
    assert model_arch.architecture == hf.config.architectures[0]
    assert model_arch.qkv_bias == (arch == "qwen2")
    seq = list(range(3, 40, 2))
    with torch.no_grad():
        ref = hf(torch.tensor([seq])).logits[0]
    logits = paged_driver(model).step([("a", seq)])["a"]
    assert float((logits - ref).abs().max() / ref.abs().max()) <= 1e-4
    tok = Tokenizer.from_dir(model_dir)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi"
    assert tok.decode(tok.encode("héllo wörld")) == "héllo wörld"
