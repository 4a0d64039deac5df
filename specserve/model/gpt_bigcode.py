"""GPTBigCode decoder (StarCoder, Granite code 20B/34B) over a paged KV cache.

Differences from the Llama family: learned absolute position embeddings (wpe) instead of RoPE,
LayerNorm with bias, a plain GELU MLP (c_fc -> gelu -> c_proj), biases on every Linear, a fused
c_attn, and usually multi-query attention (one KV head shared by all query heads; `multi_query=False`
gives one KV head per query head). The LM head is tied to wte unless the config says otherwise.

c_attn rows are kept as [Q | K | V]. That is the checkpoint layout for multi-query models;
multi-head checkpoints interleave per head ([q_h k_h v_h] for each head h) and are reordered at
load time, so forward has a single split either way.

Tensor parallelism (``tp``) works as in llama.py: each rank is built at its own shape (its heads, MLP
columns and vocabulary rows; the one KV head of a multi-query model is replicated), both c_proj layers
all-reduce, wte is vocabulary-parallel and wpe replicated.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from specserve.attention.metadata import AttentionMetadata
from specserve.attention.paged import paged_attention, write_kv
from specserve.distributed.layers import embedding, linear
from specserve.distributed.parallel_state import TensorParallel, shard_arch
from specserve.model.arch_config import ModelArchConfig
from specserve.model.output_head import check_no_missing_weights, head_logits

KVCache = tuple[torch.Tensor, torch.Tensor]  # each [num_blocks, block_size, num_kv_heads, head_dim]

# Checkpoint tensors that are derived buffers (causal masks of older exports), not weights.
_SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_SKIPPED_NAMES = ("transformer.bias", "transformer.masked_bias")


class GPTBigCodeAttention(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads
        self.head_dim = arch.head_dim
        self.q_size = arch.q_size
        self.kv_size = arch.kv_size
        self.scale = arch.attn_scale
        self.c_attn = nn.Linear(arch.hidden_size, arch.q_size + 2 * arch.kv_size)
        self.c_proj = linear(arch.q_size, arch.hidden_size, True, tp, row_parallel=True)

    def forward(self, x: torch.Tensor, kv_cache: KVCache, md: AttentionMetadata) -> torch.Tensor:
        qkv = self.c_attn(x)  # [num_tokens, q_size + 2 * kv_size]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)  # [num_tokens, num_heads, head_dim]
        k = k.view(-1, self.num_kv_heads, self.head_dim)  # [num_tokens, num_kv_heads, head_dim]
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        k_cache, v_cache = kv_cache
        write_kv(k, v, k_cache, v_cache, md.slot_mapping)
        out = paged_attention(q, k_cache, v_cache, md, self.scale)  # [num_tokens, num_heads, head_dim]
        return self.c_proj(out.reshape(-1, self.q_size))


class GPTBigCodeMLP(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.c_fc = nn.Linear(arch.hidden_size, arch.intermediate_size)
        self.c_proj = linear(arch.intermediate_size, arch.hidden_size, True, tp, row_parallel=True)
        # "gelu" is the exact erf form; gelu_pytorch_tanh, gelu_new and gelu_fast are the tanh form.
        self.approximate = "none" if arch.hidden_act == "gelu" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class GPTBigCodeBlock(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.attn = GPTBigCodeAttention(arch, tp)
        self.ln_2 = nn.LayerNorm(arch.hidden_size, eps=arch.rms_norm_eps)
        self.mlp = GPTBigCodeMLP(arch, tp)

    def forward(self, x: torch.Tensor, kv_cache: KVCache, md: AttentionMetadata) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache, md)
        return x + self.mlp(self.ln_2(x))


class GPTBigCodeModel(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.wte = embedding(arch.vocab_size, arch.hidden_size, tp)
        self.wpe = nn.Embedding(arch.max_position_embeddings, arch.hidden_size)
        self.h = nn.ModuleList(GPTBigCodeBlock(arch, tp) for _ in range(arch.num_layers))
        self.ln_f = nn.LayerNorm(arch.hidden_size, eps=arch.rms_norm_eps)


class GPTBigCodeForCausalLM(nn.Module):
    def __init__(self, arch: ModelArchConfig, tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.tp = tp
        self.local_arch = local = arch if tp is None else shard_arch(arch, tp.world_size)  # this rank's shape
        self.transformer = GPTBigCodeModel(local, tp)
        # Tied models keep no lm_head: logits use wte itself.
        self.packed_head: torch.Tensor | None = None  # panel-packed head (model/fast_linear.py)
        self.lm_head = (None if arch.tie_word_embeddings
                        else nn.Linear(arch.hidden_size, local.vocab_size, bias=False))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[KVCache],
                md: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: [num_tokens] int64. Returns [num_tokens, hidden] after ln_f.

        Positions must be < max_position_embeddings (the engine caps the context there)."""
        assert len(kv_caches) == self.arch.num_layers, "one (k_cache, v_cache) pair per layer"
        x = self.transformer.wte(input_ids) + self.transformer.wpe(positions)  # [num_tokens, hidden]
        for layer, kv_cache in zip(self.transformer.h, kv_caches):
            x = layer(x, kv_cache, md)
        return self.transformer.ln_f(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [R, hidden] -> float32 logits [R, vocab]."""
        return head_logits(hidden, self.get_output_embeddings(), self.packed_head, self.tp)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> torch.Tensor:
        return self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the parameters (names match; MHA c_attn rows are reordered).

        ValueError on unknown, misshapen or missing tensors."""
        params = dict(self.named_parameters())
        filled: set[str] = set()
        for name, tensor in weights:
            if name in _SKIPPED_NAMES or name.endswith(_SKIPPED_SUFFIXES):
                continue
            if name == "lm_head.weight" and self.lm_head is None:
                continue  # tied: some checkpoints still store a copy
            if name not in params:
                raise ValueError(f"unexpected weight {name!r}")
            param = params[name]
            if ".attn.c_attn." in name and self.local_arch.num_kv_heads > 1 and tensor.shape == param.shape:
                tensor = self._heads_to_qkv(tensor)
            if tensor.shape != param.shape:
                raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {tuple(param.shape)}")
            param.data.copy_(tensor)
            filled.add(name)
        check_no_missing_weights(sorted(set(params) - filled))

    def _heads_to_qkv(self, tensor: torch.Tensor) -> torch.Tensor:
        """Multi-head c_attn rows [q_0 k_0 v_0 q_1 k_1 v_1 ...] -> [q_0 q_1 ... | k_0 ... | v_0 ...]."""
        a = self.local_arch
        rest = tensor.shape[1:]  # (hidden,) for the weight, () for the bias
        per_head = tensor.reshape(a.num_heads, 3, a.head_dim, *rest)
        return per_head.transpose(0, 1).reshape(3 * a.num_heads * a.head_dim, *rest)
