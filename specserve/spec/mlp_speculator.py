"""IBM's MLP speculator (the accelerator format of fms-extras / Hugging Face `ibm-fms/*-accelerator`).

Stage i turns a state and the previous token into the next state and a guess for one more token:

    state <- gelu(ln[i](state_weight * proj[i](state) + emb_scale * emb[i](token)))
    logits_i = head[i](state)

with state_weight = 0.5 ** (0.5 / n_predict), emb_scale = sqrt(1 - state_weight**2) * sqrt(inner_dim / 2).
(The published form `ln(proj(s) + emb_weight / state_weight * emb(t))` is the same up to the norm's
scale invariance.) ``ln`` is an RMS norm with a learned weight and bias (no mean-centring). The first
state is the base model's last hidden state (after its final norm), RMS-normalised without weights and
divided by sqrt(2) when ``scale_input``. Stage 0 reads the token the base model just produced, so from
the hidden state at position t and token t+1 the stages guess tokens t+2 ... t+1+n_predict.

``num_lookahead_tokens`` (as in vLLM's config): how many stages a proposal may run. With tied weights
every stage from 1 on is the same function, so a tied speculator can run past ``n_predict`` by
repeating its last stage; ``state_weight`` stays the one it was trained with (from ``n_predict``).
On the shipped SmolLM2 speculator, trained with 3 stages, stages 4-6 still guess the base model's
next token 49%, 48% and 47% of the time on held-out data (teacher-forced), against 52% at stage 3.

``vocab_map`` (optional, ours): heads restricted to a subset of the vocabulary (the most frequent
output tokens); head row r stands for token ``vocab_map[r]``. Embeddings always cover the full vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from specserve.spec.cpu_chain import CpuChain


@dataclass(frozen=True)
class MLPSpeculatorConfig:
    emb_dim: int
    vocab_size: int
    n_predict: int = 3
    inner_dim: int = 0  # 0 = emb_dim
    tie_weights: bool = False
    scale_input: bool = False
    top_k_tokens_per_head: tuple[int, ...] = (4, 3, 2)
    n_candidates: int = 5
    head_vocab_size: int = 0  # 0 = full vocab; else heads predict over vocab_map only
    num_lookahead_tokens: int = 0  # stages a proposal may run; 0 = n_predict; more needs tie_weights

    def __post_init__(self) -> None:
        if self.n_predict < 1:
            raise ValueError("n_predict must be >= 1")
        if self.tie_weights and self.n_predict < 2:
            raise ValueError("tie_weights needs n_predict >= 2")
        if self.num_lookahead_tokens < 0:
            raise ValueError("num_lookahead_tokens must be >= 0")
        if self.num_lookahead_tokens > self.n_predict and not self.tie_weights:
            raise ValueError(f"num_lookahead_tokens {self.num_lookahead_tokens} > n_predict {self.n_predict} "
                             "needs tie_weights (only tied stages can be repeated)")

    @property
    def max_depth(self) -> int:
        """The most tokens one proposal path may hold."""
        return self.num_lookahead_tokens or self.n_predict

    @property
    def inner(self) -> int:
        return self.inner_dim or self.emb_dim


class SpeculatorNorm(nn.Module):
    """RMS norm with optional learned weight and bias (fms' LayerNormParameterized, use_mean=False)."""

    def __init__(self, dim: int, affine: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y


class MLPSpeculator(nn.Module):
    def __init__(self, config: MLPSpeculatorConfig) -> None:
        super().__init__()
        self.config = config
        n, inner, vocab = config.n_predict, config.inner, config.vocab_size
        head_vocab = config.head_vocab_size or vocab
        self.emb = nn.ModuleList([nn.Embedding(vocab, inner) for _ in range(n)])
        self.proj = nn.ModuleList([nn.Linear(config.emb_dim if i == 0 else inner, inner, bias=False)
                                   for i in range(n)])
        self.head = nn.ModuleList([nn.Linear(inner, head_vocab, bias=False) for _ in range(n)])
        self.ln = nn.ModuleList([SpeculatorNorm(inner) for _ in range(n)])
        self.ln0 = SpeculatorNorm(config.emb_dim, affine=False) if config.scale_input else None
        self.state_weight = 0.5 ** (0.5 / n)
        self.emb_scale = math.sqrt(1 - self.state_weight**2) * math.sqrt(inner / 2)
        self.register_buffer("vocab_map", torch.arange(head_vocab) if config.head_vocab_size else None,
                             persistent=False)
        if config.tie_weights:
            self.tie()
        self.cpu_chain: CpuChain | None = None  # set by attach_cpu_chain() once packed weights exist

    def attach_cpu_chain(self) -> bool:
        """Use the one-call CPU chain kernel for single-chain proposals when it applies (after
        enable_fast_linear has packed the weights); returns whether it was attached."""
        from specserve.spec.cpu_chain import CpuChain

        self.cpu_chain = CpuChain.build(self)
        return self.cpu_chain is not None

    def tie(self) -> None:
        """Share emb, head and ln across stages, and proj[2:] with proj[1] (IBM's tie_weights)."""
        for i in range(1, self.config.n_predict):
            self.emb[i].weight = self.emb[0].weight
            self.head[i].weight = self.head[0].weight
            self.ln[i].weight = self.ln[0].weight
            self.ln[i].bias = self.ln[0].bias
            if i >= 2:
                self.proj[i].weight = self.proj[1].weight

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        std = 1 / math.sqrt(self.config.inner)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    module.weight.normal_(0, std, generator=generator).clamp_(-2 * std, 2 * std)
            elif isinstance(module, SpeculatorNorm) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def input_state(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.ln0 is not None:
            hidden = self.ln0(hidden) / math.sqrt(2)
        return hidden

    def stage_index(self, i: int) -> int:
        """The trained stage that runs proposal step i (steps past n_predict repeat the last, tied one)."""
        if i >= self.config.max_depth:
            raise IndexError(f"step {i} is past the speculator's {self.config.max_depth} lookahead tokens")
        return min(i, self.config.n_predict - 1)

    def step(self, i: int, state: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One stage: (state [..., d], token ids [...]) -> (new state [..., inner], logits [..., head_vocab])."""
        i = self.stage_index(i)
        z = self.emb[i](token_ids) * self.emb_scale
        state = F.gelu(self.ln[i](self.proj[i](state) * self.state_weight + z))
        return state, self.head[i](state)

    def head_to_vocab(self, head_ids: torch.Tensor) -> torch.Tensor:
        return head_ids if self.vocab_map is None else self.vocab_map[head_ids]

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced training pass.

        hidden [b, n, emb_dim]: base hidden states at positions 0..n-1; token_ids [b, n + n_predict]:
        token_ids[:, t] is the token that follows position t (stage i reads token_ids[:, t + i]).
        Returns logits [n_predict, b, n, head_vocab]; stage i predicts token_ids[:, t + i + 1].
        """
        state = self.input_state(hidden)
        num = hidden.shape[1]
        out = []
        for i in range(self.config.n_predict):
            state, logits = self.step(i, state, token_ids[:, i:i + num])
            out.append(logits)
        return torch.stack(out, dim=0)

    @torch.inference_mode()
    def propose_paths(self, hidden: torch.Tensor, token_ids: torch.Tensor, top_k: list[int],
                      num_paths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Best-scoring paths of the top-k tree (IBM's generate_suffixes).

        hidden [b, emb_dim], token_ids [b] (the token just sampled). Returns token paths
        [b, num_paths, len(top_k)] and their summed log-probabilities [b, num_paths], best first.
        ``len(top_k)`` is the depth: up to ``config.max_depth`` (fewer stages = shorter drafts).
        """
        b = hidden.shape[0]
        if all(k == 1 for k in top_k):
            return self._propose_chain(hidden, token_ids, len(top_k))
        state = self.input_state(hidden).unsqueeze(1)  # [b, 1, d]
        tokens = token_ids.view(b, 1)
        paths = torch.empty(b, 1, 0, dtype=torch.long, device=hidden.device)
        scores = torch.zeros(b, 1, device=hidden.device)
        for i, k in enumerate(top_k):
            state, logits = self.step(i, state, tokens)  # [b, m, inner], [b, m, V]
            logp, top = F.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)  # [b, m, k]
            top = self.head_to_vocab(top)
            m = paths.shape[1]
            paths = torch.cat([paths.unsqueeze(2).expand(b, m, k, i), top.unsqueeze(3)], dim=3).reshape(b, m * k, i + 1)
            scores = (scores.unsqueeze(2) + logp).reshape(b, m * k)
            state = state.unsqueeze(2).expand(b, m, k, state.shape[-1]).reshape(b, m * k, -1)
            tokens = top.reshape(b, m * k)
        num_paths = min(num_paths, paths.shape[1])
        best_scores, best = scores.topk(num_paths, dim=1)
        return paths.gather(1, best.unsqueeze(2).expand(b, num_paths, paths.shape[2])), best_scores

    @torch.inference_mode()
    def propose_beam(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A beam over the stages, for the tree beside the chain (``spec/chain_beam.py``).

        The first stage runs one row a request; each later stage runs ``width``: row 0 the chain (each
        stage's best token after the chain before it), rows 1.. the best other candidates of the stage
        before by path log-probability (first on ties). Every row's ``width`` best tokens are its
        candidates. hidden [b, emb_dim], token_ids [b]. Returns, per request and stage:
        tokens [b, depth, width, width] (row, rank; -1: none), their path log-probabilities (-inf: none),
        and source [b, depth, width]: the candidate of the stage before (row * width + rank) each row
        continues (stage 0: 0 for row 0, the root; -1: no row). The CPU kernel when it applies."""
        if self.cpu_chain is not None and depth and self.cpu_chain.applies(hidden, width):
            return self.cpu_chain.propose_beam(hidden, token_ids, depth, width)
        b, dev = hidden.shape[0], hidden.device
        tokens = torch.full((b, depth, width, width), -1, dtype=torch.long, device=dev)
        logp = torch.full((b, depth, width, width), float("-inf"), device=dev)
        source = torch.full((b, depth, width), -1, dtype=torch.long, device=dev)
        if depth:
            source[:, 0, 0] = 0
        state = self.input_state(hidden).unsqueeze(1)  # [b, rows, d]
        row_tokens = token_ids.view(b, 1)
        row_logp = torch.zeros(b, 1, device=dev)
        batch = torch.arange(b, device=dev).unsqueeze(1)
        for i in range(depth):
            state, logits = self.step(i, state, row_tokens)  # [b, rows, inner], [b, rows, V]
            logits = logits.float()
            rows, k = logits.shape[1], min(width, logits.shape[-1])
            values, index = logits.sort(dim=-1, descending=True, stable=True)  # first index on ties
            values, index = values[..., :k], index[..., :k]
            cand = row_logp.unsqueeze(-1) + values - torch.logsumexp(logits, dim=-1, keepdim=True)
            live = (source[:, i, :rows] >= 0).unsqueeze(-1) & torch.isfinite(values)
            tokens[:, i, :rows, :k] = torch.where(live, self.head_to_vocab(index), -1)
            logp[:, i, :rows, :k] = torch.where(live, cand, float("-inf"))
            if i + 1 == depth:
                break
            flat = logp[:, i].reshape(b, width * width)
            others = flat[:, 1:].sort(dim=1, descending=True, stable=True)
            chosen = torch.cat([torch.zeros(b, 1, dtype=torch.long, device=dev), others.indices[:, :width - 1] + 1], 1)
            has = torch.cat([torch.isfinite(flat[:, :1]), torch.isfinite(others.values[:, :width - 1])], 1)
            source[:, i + 1] = torch.where(has, chosen, -1)
            pick = torch.where(has, chosen, 0)  # a row without a candidate runs on the chain's (and is ignored)
            state = state[batch, pick // width]
            row_tokens = tokens[:, i].reshape(b, width * width)[batch, pick]
            row_tokens = torch.where(row_tokens >= 0, row_tokens, token_ids.view(b, 1))
            row_logp = flat[batch, pick]
        return tokens, logp, source

    def _propose_chain(self, hidden: torch.Tensor, token_ids: torch.Tensor,
                       depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The best path when only one is wanted: each stage's argmax, no top-k tree to build.

        The same path as the tree search with top-k 1 everywhere, in fewer operations: a decode step
        on this CPU is ~10 ms, so the few hundred microseconds of tree bookkeeping matter. The CPU
        kernel when it applies.
        """
        if depth and self.cpu_chain is not None and self.cpu_chain.applies(hidden):
            tokens, score = self.cpu_chain.propose(hidden, token_ids, depth)
            return tokens.unsqueeze(1), score.unsqueeze(1)
        state = self.input_state(hidden)
        tokens = token_ids
        path = []
        score = torch.zeros(hidden.shape[0], device=hidden.device)
        for i in range(depth):
            state, logits = self.step(i, state, tokens)
            logits = logits.float()
            best, top = logits.max(dim=-1)  # first index on ties, as torch.max and the kernel
            score = score + best - torch.logsumexp(logits, dim=-1)
            tokens = self.head_to_vocab(top)
            path.append(tokens)
        if not depth:
            return torch.empty(hidden.shape[0], 1, 0, dtype=torch.long, device=hidden.device), score.unsqueeze(1)
        return torch.stack(path, 1).unsqueeze(1), score.unsqueeze(1)
