"""Builds the hand-written CPU kernels (cpu_gemm*.c, cpu_attention.c, cpu_fused.c, cpu_decoder.c,
cpu_speculator.c) with gcc at first use.

The shared library is cached under SPECSERVE_HOME/kernels, keyed by the sources' hash and the compile
flags, and written atomically (concurrent builders each compile to a temporary file). A missing
compiler, a failed build or a CPU without AVX-512 leaves ``load_library()`` returning None, with one
warning, and every caller keeps its PyTorch path. SPECSERVE_CPU_KERNELS=0 turns the kernels off
(benchmarks use it for before/after figures).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent
SOURCES = [_HERE / name for name in ("cpu_gemm.c", "cpu_gemm_packed.c", "cpu_attention.c", "cpu_attention_bf16.c",
                                     "cpu_fused.c", "cpu_decoder.c", "cpu_speculator.c")]
HEADERS = [_HERE / "cpu_common.h", _HERE / "cpu_attention_impl.h"]
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp", "-shared", "-fPIC"]

_VOIDP, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


@dataclass(frozen=True)
class CpuKernels:
    gemm_f32: Any
    gemm_bf16: Any | None  # None where the CPU lacks AVX512-BF16
    pack_f32: Any
    pack_bf16: Any
    gemm_packed_f32: Any
    gemm_packed_bf16: Any | None
    paged_attention: Any
    add_rms_norm: Any
    rope_write_kv: Any
    silu_mul: Any
    llama_decoder: Any
    mlp_chain: Any
    mlp_beam: Any


_library: CpuKernels | None = None
_attempted = False
_lock = threading.Lock()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cache_dir() -> Path:
    home = os.environ.get("SPECSERVE_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "specserve")
    return Path(home) / "kernels"


def build_library() -> Path:
    """Compile the sources (once per version) and return the shared library's path."""
    sources = b"".join(p.read_bytes() for p in SOURCES + HEADERS)
    digest = hashlib.sha256(sources + " ".join(FLAGS).encode()).hexdigest()[:16]
    target = _cache_dir() / f"specserve_cpu-{digest}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler (gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, f"-I{_HERE}", "-o", tmp, *map(str, SOURCES), "-lm"], check=True,
                       capture_output=True, text=True)
        os.replace(tmp, target)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{compiler} failed: {exc.stderr.strip()[:500]}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL, has_bf16: bool) -> CpuKernels:
    gemm_args = [_VOIDP] * 3 + [_INT] * 4
    fns = {"specserve_gemm_f32": gemm_args, "specserve_gemm_bf16": gemm_args,
           "specserve_gemm_packed_f32": gemm_args, "specserve_gemm_packed_bf16": gemm_args,
           "specserve_pack_f32": [_VOIDP] * 2 + [_INT] * 2, "specserve_pack_bf16": [_VOIDP] * 2 + [_INT] * 2,
           "specserve_paged_attention": [_VOIDP] * 4 + [_INT] + [_VOIDP] * 4 + [_INT] + [_VOIDP] * 2
           + [_INT] * 5 + [_FLOAT, _INT],
           "specserve_add_rms_norm": [_VOIDP] * 5 + [_INT, _INT, _FLOAT, _INT],
           "specserve_rope_write_kv": [_VOIDP] * 7 + [_INT] * 5,
           "specserve_silu_mul": [_VOIDP] * 2 + [_INT] * 3,
           "specserve_llama_decoder": [_VOIDP] * 2, "specserve_mlp_chain": [_VOIDP],
           "specserve_mlp_beam": [_VOIDP]}
    for name, args in fns.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = _INT if name in ("specserve_paged_attention", "specserve_llama_decoder") else None
    return CpuKernels(gemm_f32=lib.specserve_gemm_f32,
                      gemm_bf16=lib.specserve_gemm_bf16 if has_bf16 else None,
                      pack_f32=lib.specserve_pack_f32, pack_bf16=lib.specserve_pack_bf16,
                      gemm_packed_f32=lib.specserve_gemm_packed_f32,
                      gemm_packed_bf16=lib.specserve_gemm_packed_bf16 if has_bf16 else None,
                      paged_attention=lib.specserve_paged_attention,
                      add_rms_norm=lib.specserve_add_rms_norm, rope_write_kv=lib.specserve_rope_write_kv,
                      silu_mul=lib.specserve_silu_mul, llama_decoder=lib.specserve_llama_decoder,
                      mlp_chain=lib.specserve_mlp_chain, mlp_beam=lib.specserve_mlp_beam)


def load_library() -> CpuKernels | None:
    """The kernels, or None where they cannot run here (logged once)."""
    global _library, _attempted
    if _attempted:
        return _library
    with _lock:
        if _attempted:
            return _library
        _attempted = True
        if os.environ.get("SPECSERVE_CPU_KERNELS", "1") == "0":
            return None
        flags = _cpu_flags()
        if not {"avx512f", "avx512bw", "avx512vl"} <= flags:
            log.info("CPU lacks AVX-512: specserve's CPU kernels are off, PyTorch ops are used")
            return None
        try:
            import torch  # noqa: F401  (its libgomp must be loaded first so the kernels share its threads)

            _library = _bind(ctypes.CDLL(str(build_library())), has_bf16="avx512_bf16" in flags)
        except (OSError, RuntimeError) as exc:
            log.warning("specserve's CPU kernels are unavailable, using PyTorch ops: %s", exc)
            _library = None
        return _library


def loaded() -> CpuKernels | None:
    """Like load_library() but without the lock once the first attempt is done (hot path)."""
    return _library if _attempted else load_library()
