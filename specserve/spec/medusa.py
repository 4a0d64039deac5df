"""Medusa heads: head i guesses token t+2+i from the base hidden state at t alone.

Each head is one residual block ``h + silu(W h + b)`` followed by its own output layer, as in the
Medusa paper; unlike the MLP speculator no head sees the tokens guessed before it, which is why its
later stages are weaker. Stored as config.json (``"architectures": ["MedusaHeads"]``) + safetensors
with keys ``heads.N.block.weight``, ``heads.N.block.bias``, ``heads.N.out.weight`` and an optional
``vocab_map`` (outputs restricted to the most frequent tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from specserve.spec.siblings import ChainProposal


@dataclass(frozen=True)
class MedusaConfig:
    hidden_size: int
    vocab_size: int
    num_heads: int = 3
    head_vocab_size: int = 0  # 0 = full vocabulary
    top_k_tokens_per_head: tuple[int, ...] = (4, 3, 2)
    n_candidates: int = 5


class MedusaHead(nn.Module):
    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.block = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, out, bias=False)
        nn.init.zeros_(self.block.weight)  # start as the identity residual, as Medusa does
        nn.init.zeros_(self.block.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(hidden + F.silu(self.block(hidden)))


class MedusaHeads(nn.Module):
    def __init__(self, config: MedusaConfig) -> None:
        super().__init__()
        self.config = config
        out = config.head_vocab_size or config.vocab_size
        self.heads = nn.ModuleList([MedusaHead(config.hidden_size, out) for _ in range(config.num_heads)])
        self.register_buffer("vocab_map", torch.arange(out) if config.head_vocab_size else None, persistent=False)

    @property
    def n_predict(self) -> int:
        return self.config.num_heads

    def forward(self, hidden: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Training pass: hidden [b, n, d] -> logits [num_heads, b, n, head_vocab] (token_ids unused)."""
        return torch.stack([head(hidden) for head in self.heads], dim=0)

    def head_to_vocab(self, head_ids: torch.Tensor) -> torch.Tensor:
        return head_ids if self.vocab_map is None else self.vocab_map[head_ids]

    @torch.inference_mode()
    def propose_chain_siblings(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int) -> ChainProposal:
        """The single chain (as ``propose_paths`` with top-k 1) and every head's second token, for
        ``siblings.chain_with_siblings``. hidden [b, emb_dim], token_ids [b] (unused: the heads read only
        the base hidden state)."""
        logp = torch.stack([F.log_softmax(self.heads[i](hidden).float(), dim=-1) for i in range(depth)], 1)
        top_logp, top = logp.topk(min(2, logp.shape[-1]), dim=-1)  # [b, depth, 2]
        prefix = top_logp[..., 0].cumsum(1) - top_logp[..., 0]  # the chain's log-probability before each head
        if top.shape[-1] < 2:  # one-row heads: no second token
            return ChainProposal(self.head_to_vocab(top[..., 0]), torch.full_like(top[..., 0], -1),
                                 torch.full_like(prefix, float("-inf")))
        return ChainProposal(self.head_to_vocab(top[..., 0]), self.head_to_vocab(top[..., 1]), prefix + top_logp[..., 1])

    @torch.inference_mode()
    def propose_paths(self, hidden: torch.Tensor, token_ids: torch.Tensor, top_k: list[int],
                      num_paths: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as MLPSpeculator.propose_paths; the tree is the product of per-head top-k."""
        b = hidden.shape[0]
        paths = torch.empty(b, 1, 0, dtype=torch.long, device=hidden.device)
        scores = torch.zeros(b, 1, device=hidden.device)
        for i, k in enumerate(top_k):
            logp, top = F.log_softmax(self.heads[i](hidden).float(), dim=-1).topk(k, dim=-1)  # [b, k]
            top = self.head_to_vocab(top)
            m = paths.shape[1]
            paths = torch.cat([paths.unsqueeze(2).expand(b, m, k, i),
                               top.view(b, 1, k, 1).expand(b, m, k, 1)], dim=3).reshape(b, m * k, i + 1)
            scores = (scores.unsqueeze(2) + logp.unsqueeze(1)).reshape(b, m * k)
        num_paths = min(num_paths, paths.shape[1])
        best_scores, best = scores.topk(num_paths, dim=1)
        return paths.gather(1, best.unsqueeze(2).expand(b, num_paths, paths.shape[2])), best_scores


def save_medusa(model: MedusaHeads, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    c = model.config
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if model.vocab_map is not None:
        tensors["vocab_map"] = model.vocab_map.to(torch.int64)
    save_file(tensors, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "architectures": ["MedusaHeads"], "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
        "num_heads": c.num_heads, "head_vocab_size": c.head_vocab_size,
        "top_k_tokens_per_head": list(c.top_k_tokens_per_head), "n_candidates": c.n_candidates}, indent=2))


def load_medusa(path: str | Path) -> MedusaHeads:
    from specserve.spec.checkpoint import SpeculatorLoadError, read_config

    path = Path(path)
    raw = read_config(path)
    try:
        config = MedusaConfig(hidden_size=int(raw["hidden_size"]), vocab_size=int(raw["vocab_size"]),
                              num_heads=int(raw["num_heads"]), head_vocab_size=int(raw.get("head_vocab_size", 0)),
                              top_k_tokens_per_head=tuple(raw.get("top_k_tokens_per_head", [1] * int(raw["num_heads"]))),
                              n_candidates=int(raw.get("n_candidates", 1)))
    except (KeyError, TypeError, ValueError) as exc:
        raise SpeculatorLoadError(f"{path}: invalid Medusa config: {exc}") from None
    state = load_file(str(path / "model.safetensors"))
    model = MedusaHeads(config)
    if config.head_vocab_size:
        model.vocab_map = state.pop("vocab_map").long()
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise SpeculatorLoadError(f"{path}: {str(exc).splitlines()[0]}") from None
    return model
