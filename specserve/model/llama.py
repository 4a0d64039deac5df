"""Llama-family decoder (Llama, Mistral, Qwen2, Granite) over a paged KV cache.

The batch is flat: requests' prefill chunks and decode tokens are concatenated into [num_tokens] and
told apart only by the attention metadata. q/k/v and gate/up are fused into single Linears at load
time, which halves the matmul launches that dominate small-batch decode.

Tensor parallelism (``tp``, see specserve/distributed/): each rank builds the model at its own shape
(``shard_arch``: 1/N of the heads, MLP columns and vocabulary), so forward runs unchanged on local
heads; o_proj and down_proj all-reduce, the embedding is vocabulary-parallel and the logits are
gathered. The loader hands each rank its slices, so ``load_weights`` works on local shapes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from specserve.attention.metadata import AttentionMetadata
from specserve.attention.paged import paged_attention, write_kv
from specserve.distributed.layers import embedding, linear
from specserve.distributed.parallel_state import TensorParallel, shard_arch
from specserve.kernels import cpu_fused
from specserve.model.arch_config import ModelArchConfig
from specserve.model.cpu_decoder import CpuDecoder
from specserve.model.layers import GatedMLP, RMSNorm, RotaryEmbedding, apply_rope
from specserve.model.output_head import check_no_missing_weights, head_logits

KVCache = tuple[torch.Tensor, torch.Tensor]  # each [num_blocks, block_size, num_kv_heads, head_dim]


class LlamaAttention(nn.Module):
    """``arch`` is this rank's shape under tensor parallelism (its heads only)."""

    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.q_size = arch.q_size
        self.kv_size = arch.kv_size
        self.scale = arch.attn_scale
        self.qkv_proj = nn.Linear(arch.hidden_size, arch.q_size + 2 * arch.kv_size, bias=arch.qkv_bias)
        self.o_proj = linear(arch.q_size, arch.hidden_size, arch.o_bias, tp, row_parallel=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv_cache: KVCache,
                md: AttentionMetadata) -> torch.Tensor:
        qkv = self.qkv_proj(x)  # [num_tokens, q_size + 2 * kv_size]
        k_cache, v_cache = kv_cache
        # CPU: rotate q and k and write k, v into the cache in one kernel call.
        q = cpu_fused.rope_write_kv(qkv, cos, sin, k_cache, v_cache, md.slot_mapping, self.num_heads,
                                    self.num_kv_heads, self.head_dim)
        if q is not None:
            out = paged_attention(q, k_cache, v_cache, md, self.scale)
            return self.o_proj(out.reshape(-1, self.q_size))
        qk_size = self.q_size + self.kv_size
        # q and k are rotated together: one rope call instead of two.
        qk = qkv[:, :qk_size].view(-1, self.num_heads + self.num_kv_heads, self.head_dim)
        qk = apply_rope(qk, cos, sin)
        q = qk[:, :self.num_heads]  # [num_tokens, num_heads, head_dim]
        k = qk[:, self.num_heads:]  # [num_tokens, num_kv_heads, head_dim]
        v = qkv[:, qk_size:].view(-1, self.num_kv_heads, self.head_dim)
        write_kv(k, v, k_cache, v_cache, md.slot_mapping)
        out = paged_attention(q, k_cache, v_cache, md, self.scale)  # [num_tokens, num_heads, head_dim]
        return self.o_proj(out.reshape(-1, self.q_size))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(arch, tp)
        self.mlp = GatedMLP(arch.hidden_size, arch.intermediate_size, arch.mlp_bias, tp)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.residual_multiplier = arch.residual_multiplier

    def forward(self, h: torch.Tensor, residual: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: KVCache, md: AttentionMetadata) -> tuple[torch.Tensor, torch.Tensor]:
        """(previous layer's update, residual stream) -> (this layer's update, residual stream).

        The residual add is deferred into the next norm (add_norm), so on CPU each add and norm is
        one kernel call; the first layer gets residual None and h = the embeddings."""
        if residual is None:
            residual, normed = h, self.input_layernorm(h)
        else:
            residual, normed = self.input_layernorm.add_norm(residual, h)
        h = self._scaled(self.self_attn(normed, cos, sin, kv_cache, md))
        residual, normed = self.post_attention_layernorm.add_norm(residual, h)
        return self._scaled(self.mlp(normed)), residual

    def _scaled(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.residual_multiplier == 1.0 else h * self.residual_multiplier


class LlamaModel(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.embed_tokens = embedding(arch.vocab_size, arch.hidden_size, tp)
        self.layers = nn.ModuleList(LlamaDecoderLayer(arch, tp) for _ in range(arch.num_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.tp = tp
        # This rank's shape (the whole model without tensor parallelism); ValueError if N does not divide.
        self.local_arch = local = arch if tp is None else shard_arch(arch, tp.world_size)
        self.model = LlamaModel(local, tp)
        self.rotary = RotaryEmbedding(arch.rope, arch.head_dim, arch.max_position_embeddings)
        # Tied models keep no lm_head: logits use the embedding matrix itself.
        self.packed_head: torch.Tensor | None = None  # panel-packed head (model/fast_linear.py)
        self.lm_head = (None if arch.tie_word_embeddings
                        else nn.Linear(arch.hidden_size, local.vocab_size, bias=False))
        self.cpu_decoder: CpuDecoder | None = None  # set by attach_cpu_decoder once weights are packed

    def attach_cpu_decoder(self) -> None:
        """Run short-query steps through the one-call CPU decoder where it applies (model/cpu_decoder.py)."""
        self.cpu_decoder = CpuDecoder(self) if CpuDecoder.supported(self) else None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                md: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [num_tokens] int64. Returns [num_tokens, hidden] after the final norm."""
        assert len(kv_caches) == self.arch.num_layers, "one (k_cache, v_cache) pair per layer"
        x = self.model.embed_tokens(input_ids)  # [num_tokens, hidden]
        if self.arch.embedding_multiplier != 1.0:
            x = x * self.arch.embedding_multiplier
        cos, sin = self.rotary(positions, x.dtype)
        if self.cpu_decoder is not None:
            hidden = self.cpu_decoder.run(x, cos, sin, kv_caches, md)
            if hidden is not None:
                return hidden
        residual: torch.Tensor | None = None
        for layer, kv_cache in zip(self.model.layers, kv_caches):
            x, residual = layer(x, residual, cos, sin, kv_cache, md)
        if residual is None:  # a model without layers
            return self.model.norm(x)
        return self.model.norm.add_norm(residual, x)[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [R, hidden] -> float32 logits [R, vocab]."""
        return head_logits(hidden, self.get_output_embeddings(), self.packed_head, self.tp, self.arch.logits_scaling)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the (fused) parameters.

        ValueError on unknown, misshapen or missing tensors."""
        params = dict(self.named_parameters())
        # Every (param, first row) slot that must be filled; fused params have several.
        expected = {(name, start) for name in params for start, _ in self._shards(name, params[name])}
        filled: set[tuple[str, int]] = set()
        for hf_name, tensor in weights:
            target = self._map_name(hf_name)
            if target is None:
                continue
            name, start = target
            if name not in params:
                raise ValueError(f"unexpected weight {hf_name!r}")
            length = dict(self._shards(name, params[name]))[start]
            rows = params[name].data.narrow(0, start, length)
            if tensor.shape != rows.shape:
                raise ValueError(f"weight {hf_name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(rows.shape)}")
            rows.copy_(tensor)
            filled.add((name, start))
        check_no_missing_weights(sorted(f"{n}[{s}:]" if s else n for n, s in expected - filled))

    def _shards(self, name: str, param: torch.Tensor) -> list[tuple[int, int]]:
        """(first row, num rows) of each checkpoint tensor packed into this parameter."""
        a = self.local_arch
        if ".qkv_proj." in name:
            return [(0, a.q_size), (a.q_size, a.kv_size), (a.q_size + a.kv_size, a.kv_size)]
        if ".gate_up_proj." in name:
            return [(0, a.intermediate_size), (a.intermediate_size, a.intermediate_size)]
        return [(0, param.shape[0])]

    def _map_name(self, hf_name: str) -> tuple[str, int] | None:
        """HF checkpoint name -> (our param name, first row in it); None for tensors to skip."""
        if hf_name.endswith("rotary_emb.inv_freq"):
            return None  # derived, recomputed from the config
        if hf_name == "lm_head.weight" and self.lm_head is None:
            return None  # tied: some checkpoints still store a copy
        a = self.local_arch
        for hf_part, ours, start in (
            (".q_proj.", ".qkv_proj.", 0),
            (".k_proj.", ".qkv_proj.", a.q_size),
            (".v_proj.", ".qkv_proj.", a.q_size + a.kv_size),
            (".gate_proj.", ".gate_up_proj.", 0),
            (".up_proj.", ".gate_up_proj.", a.intermediate_size),
        ):
            if hf_part in hf_name:
                return hf_name.replace(hf_part, ours), start
        return hf_name, 0
