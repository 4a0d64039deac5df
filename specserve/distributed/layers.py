"""Tensor-parallel layers (Megatron-style), each a drop-in for the nn module it replaces.

- Column-parallel linear (QKV, gate/up, GPTBigCode c_fc): an ordinary ``nn.Linear`` over this rank's
  output rows. No communication: its output (this rank's heads or MLP columns) feeds the local
  attention or activation directly. The loader gives it the rank's rows (shard_loading.py).
- ``RowParallelLinear`` (o_proj, down_proj, c_proj): input features split across ranks; each rank
  computes a partial product and one all-reduce sums them. The bias is added once, after the sum.
- ``VocabParallelEmbedding``: rank r holds token rows [r * V/N, (r + 1) * V/N); ids outside give zero
  rows, and the all-reduce fills each row from the rank that holds it.
- The LM head is column-parallel over the vocabulary; ``TensorParallel.all_gather_last_dim`` puts the
  full logits together (the model's ``compute_logits`` calls it).

After every all-reduce the hidden state is identical on all ranks, so norms and residuals run
replicated, and rank 0 holds the full hidden state (what the speculator reads).
With ``tp=None`` the model builds plain modules: a single process pays nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from specserve.model.fast_linear import project

if TYPE_CHECKING:
    from specserve.distributed.parallel_state import TensorParallel


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_r @ W_r^T) + b, where x_r and W_r are this rank's slice of the input features."""


    def __init__(self, in_features: int, out_features: int, bias: bool, tp: TensorParallel) -> None:
        super().__init__(in_features, out_features, bias=bias)  # in_features: this rank's slice
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = project(x, self.weight)  # [num_tokens, out]: this rank's partial sum
        self.tp.all_reduce(y)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, tp: TensorParallel) -> None:
        super().__init__(num_embeddings, embedding_dim)  # num_embeddings: this rank's rows
        self.tp = tp
        self.vocab_start = tp.rank * num_embeddings

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local_ids = input_ids - self.vocab_start
        outside = (local_ids < 0) | (local_ids >= self.num_embeddings)
        x = F.embedding(local_ids.masked_fill(outside, 0), self.weight)  # [num_tokens, dim]
        x.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(x)


def linear(in_features: int, out_features: int, bias: bool, tp: TensorParallel | None,
           row_parallel: bool = False) -> nn.Linear:
    """The Linear for one projection: a plain one unless it is row-parallel under tensor parallelism."""
    if row_parallel and tp is not None:
        return RowParallelLinear(in_features, out_features, bias, tp)
    return nn.Linear(in_features, out_features, bias=bias)


def embedding(num_embeddings: int, embedding_dim: int, tp: TensorParallel | None) -> nn.Embedding:
    if tp is None:
        return nn.Embedding(num_embeddings, embedding_dim)
    return VocabParallelEmbedding(num_embeddings, embedding_dim, tp)
