"""The whole decoder stack of a Llama-family model in one kernel call (kernels/cpu_decoder.c), on CPU.

For steps whose every request has a short query (decode tokens, speculative candidates) and at most
PACKED_MAX_ROWS tokens, ``CpuDecoder.run`` replaces the per-layer Python loop: same kernels, same
order, same roundings, so the hidden states equal the module path's exactly; only the ~10 ctypes calls
and module dispatches per layer are gone. Anything else (prefill chunks, CUDA, autograd, biases, Granite's
residual multiplier, tensor parallelism, weights without a packed copy) keeps the module path.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

import torch

from specserve.attention.metadata import AttentionMetadata
from specserve.attention.paged import cpu_kernel_plan
from specserve.kernels.build import loaded
from specserve.kernels.cpu_gemm import PACKED_MAX_ROWS

if TYPE_CHECKING:
    from specserve.model.llama import LlamaForCausalLM

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float

# SPECSERVE_CPU_DECODER=0 keeps the per-layer module path (for before/after measurements and tests).
ENABLED = os.environ.get("SPECSERVE_CPU_DECODER", "1") != "0"


class DecoderLayerArgs(ctypes.Structure):  # mirrors DecoderLayer in cpu_decoder.c
    _fields_ = [(name, _P) for name in ("input_norm", "qkv", "o", "post_norm", "gate_up", "down",
                                        "k_cache", "v_cache")]


class DecoderStepArgs(ctypes.Structure):  # mirrors DecoderStep in cpu_decoder.c
    _fields_ = ([(name, _I) for name in ("num_layers", "M", "hidden", "inter", "H", "Hkv", "D", "block_size",
                                         "is_bf16", "threads")]
                + [("eps", _F), ("scale", _F)]
                + [(name, _P) for name in ("embeddings", "residual", "normed", "qkv", "q", "attn", "update",
                                           "gate_up", "act", "cos", "sin", "slots", "q_start", "q_len",
                                           "seq_len", "block_tables")]
                + [("max_blocks", _I), ("num_reqs", _I), ("mask_off", _P), ("masks", _P), ("final_norm", _P)])


class CpuDecoder:
    """Holds the layer table (parameter and cache addresses) for one model and one set of KV caches."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        self.model = model
        self.arch = model.local_arch
        self.dtype = model.model.embed_tokens.weight.dtype
        self.kv_caches: list | None = None
        self.layer_table: ctypes.Array | None = None

    @staticmethod
    def supported(model: LlamaForCausalLM) -> bool:
        """Whether the model's shape and weights fit the kernel (checked once, after packing)."""
        arch = model.local_arch
        kernels = loaded()
        weight = model.model.embed_tokens.weight
        if not ENABLED or kernels is None or weight.device.type != "cpu" or model.tp is not None or not model.model.layers:
            return False
        if weight.dtype not in PACKED_MAX_ROWS or (weight.dtype == torch.bfloat16 and kernels.gemm_packed_bf16 is None):
            return False
        if (arch.residual_multiplier != 1.0 or arch.hidden_size % 16 or arch.intermediate_size % 32
                or arch.head_dim % 32 or arch.head_dim > 256 or arch.num_heads // arch.num_kv_heads > 32):
            return False
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj):
                if getattr(linear, "packed", None) is None or linear.bias is not None:
                    return False
        return True

    def _layers(self, kv_caches: list) -> ctypes.Array:
        if self.layer_table is None or self.kv_caches is not kv_caches:
            table = (DecoderLayerArgs * len(kv_caches))()
            for entry, layer, (k_cache, v_cache) in zip(table, self.model.model.layers, kv_caches):
                attn, mlp = layer.self_attn, layer.mlp
                entry.input_norm = layer.input_layernorm.weight.data_ptr()
                entry.qkv = attn.qkv_proj.packed.data_ptr()
                entry.o = attn.o_proj.packed.data_ptr()
                entry.post_norm = layer.post_attention_layernorm.weight.data_ptr()
                entry.gate_up = mlp.gate_up_proj.packed.data_ptr()
                entry.down = mlp.down_proj.packed.data_ptr()
                entry.k_cache, entry.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
            self.layer_table, self.kv_caches = table, kv_caches
        return self.layer_table

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_caches: list,
            md: AttentionMetadata) -> torch.Tensor | None:
        """x: [M, hidden] input embeddings -> final normed hidden states, or None (use the module path)."""
        rows = x.shape[0]
        if (not 0 < rows <= PACKED_MAX_ROWS[self.dtype] or x.dtype != self.dtype
                or (torch.is_grad_enabled() and x.requires_grad) or md.slot_mapping.dtype != torch.int64):
            return None
        k_cache = kv_caches[0][0]
        if k_cache.dtype != self.dtype or not k_cache.is_contiguous():
            return None
        plan = cpu_kernel_plan(md)
        if plan is None:
            return None
        a = self.arch
        qkv_size = (a.num_heads + 2 * a.num_kv_heads) * a.head_dim
        empty = lambda *shape: torch.empty(*shape, dtype=x.dtype)  # noqa: E731
        residual, normed, update = empty(rows, a.hidden_size), empty(rows, a.hidden_size), empty(rows, a.hidden_size)
        qkv, q, attn = empty(rows, qkv_size), empty(rows, a.q_size), empty(rows, a.q_size)
        gate_up, act = empty(rows, 2 * a.intermediate_size), empty(rows, a.intermediate_size)
        x, cos, sin, slots = x.contiguous(), cos.contiguous(), sin.contiguous(), md.slot_mapping.contiguous()
        step = DecoderStepArgs(
            num_layers=a.num_layers, M=rows, hidden=a.hidden_size, inter=a.intermediate_size, H=a.num_heads,
            Hkv=a.num_kv_heads, D=a.head_dim, block_size=k_cache.shape[1], is_bf16=int(x.dtype == torch.bfloat16),
            threads=torch.get_num_threads(), eps=a.rms_norm_eps, scale=a.attn_scale,
            embeddings=x.data_ptr(), residual=residual.data_ptr(), normed=normed.data_ptr(), qkv=qkv.data_ptr(),
            q=q.data_ptr(), attn=attn.data_ptr(), update=update.data_ptr(), gate_up=gate_up.data_ptr(),
            act=act.data_ptr(), cos=cos.data_ptr(), sin=sin.data_ptr(), slots=slots.data_ptr(),
            q_start=plan.q_start.data_ptr(), q_len=plan.q_len.data_ptr(), seq_len=plan.seq_len.data_ptr(),
            block_tables=plan.block_tables.data_ptr(), max_blocks=plan.block_tables.shape[1],
            num_reqs=plan.num, mask_off=plan.mask_off.data_ptr(), masks=plan.masks.data_ptr(),
            final_norm=self.model.model.norm.weight.data_ptr())
        status = loaded().llama_decoder(ctypes.byref(step), self._layers(kv_caches))
        return normed if status == 0 else None
