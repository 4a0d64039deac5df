"""An MLP speculator's single-chain proposal in one kernel call on CPU (kernels/cpu_speculator.c).

``CpuChain.propose(hidden, token_ids, depth)`` returns the same kind of result as the PyTorch chain
(each stage's argmax fed to the next stage), without its ~25 small ops per proposal. It applies when the
speculator runs on CPU in float32 or bfloat16 with panel-packed copies of every proj and head weight
(``enable_fast_linear``), outside autograd; ``CpuChain.build`` returns None otherwise and the caller keeps
the PyTorch path. SPECSERVE_CPU_CHAIN=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

import torch

from specserve.kernels.build import loaded
from specserve.kernels.cpu_gemm import PACKED_MAX_ROWS

if TYPE_CHECKING:
    from specserve.spec.mlp_speculator import MLPSpeculator

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
ENABLED = os.environ.get("SPECSERVE_CPU_CHAIN", "1") != "0"


class MlpChainArgs(ctypes.Structure):  # mirrors MlpChain in cpu_speculator.c
    _fields_ = ([(name, _I) for name in ("M", "depth", "emb_dim", "inner", "head_rows", "is_bf16", "threads",
                                         "scale_input")]
                + [(name, _F) for name in ("eps", "input_eps", "emb_scale", "state_weight")]
                + [(name, _P) for name in ("hidden", "last_tokens", "emb", "proj", "ln_weight", "ln_bias", "head",
                                           "vocab_map", "state", "projected", "logits", "work", "out_tokens",
                                           "out_scores", "out_second", "out_second_logp", "first_rank")])


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (_P * len(tensors))(*[t.data_ptr() for t in tensors])


class CpuChain:
    def __init__(self, model: MLPSpeculator) -> None:
        self.model = model
        # One table entry per proposal step: steps past n_predict point at the last (tied) stage.
        stages = [model.stage_index(i) for i in range(model.config.max_depth)]
        self.max_depth = len(stages)
        self.dtype = model.head[0].weight.dtype
        # Keep every tensor whose address the kernel reads alive and contiguous.
        self.emb = [model.emb[i].weight.detach().contiguous() for i in stages]
        self.ln_weight = [model.ln[i].weight.detach().contiguous() for i in stages]
        self.ln_bias = [model.ln[i].bias.detach().contiguous() for i in stages]
        self.proj = [model.proj[i].packed for i in stages]
        self.head = [model.head[i].packed for i in stages]
        self.vocab_map = None if model.vocab_map is None else model.vocab_map.to(torch.int64).contiguous()
        self.tables = {name: _pointers(getattr(self, name)) for name in ("emb", "ln_weight", "ln_bias", "proj", "head")}
        self.work = torch.empty(model.config.inner)

    @classmethod
    def build(cls, model: MLPSpeculator) -> CpuChain | None:
        kernels = loaded()
        weight = model.head[0].weight
        if not ENABLED or kernels is None or weight.device.type != "cpu" or weight.dtype not in PACKED_MAX_ROWS:
            return None
        if weight.dtype == torch.bfloat16 and kernels.gemm_packed_bf16 is None:
            return None
        linears = list(model.proj) + list(model.head)
        if any(getattr(m, "packed", None) is None or m.bias is not None for m in linears):
            return None
        if any(t.dtype != weight.dtype for t in model.parameters()):
            return None
        return cls(model)

    def applies(self, hidden: torch.Tensor) -> bool:
        return (hidden.device.type == "cpu" and hidden.dtype == self.dtype and hidden.dim() == 2
                and 1 <= hidden.shape[0] <= PACKED_MAX_ROWS[self.dtype] and not torch.is_grad_enabled())

    def propose(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int,
                siblings: bool = False, first_rank: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """hidden [M, emb_dim], token_ids [M] -> the chain's tokens [M, depth] and log-probabilities [M];
        with ``siblings``, also each stage's second-best token [M, depth] (-1 where the head has one row)
        and the log-probability of its path, the chain before it and then it [M, depth].
        ``first_rank`` [M] (0 or 1): rows with 1 start from their first stage's runner-up instead of its
        best token (where the head has a second row) and follow the chain from there."""
        model, config = self.model, self.model.config
        if not 0 < depth <= self.max_depth:
            raise ValueError(f"chain depth {depth} is outside 1..{self.max_depth}")
        m = hidden.shape[0]
        hidden = hidden.contiguous()
        last = token_ids.to(torch.int64).contiguous()
        state = torch.empty(m, max(config.emb_dim, config.inner), dtype=self.dtype)
        projected = torch.empty(m, config.inner, dtype=self.dtype)
        head_rows = model.head[0].weight.shape[0]
        logits = torch.empty(m, head_rows, dtype=self.dtype)
        out = torch.empty(m, depth, dtype=torch.int64)
        scores = torch.zeros(m)
        second = torch.empty(m, depth, dtype=torch.int64) if siblings else None
        second_logp = torch.empty(m, depth) if siblings else None
        rank = None if first_rank is None else first_rank.to(torch.int32).contiguous()
        args = MlpChainArgs(
            M=m, depth=depth, emb_dim=config.emb_dim, inner=config.inner, head_rows=head_rows,
            is_bf16=int(self.dtype == torch.bfloat16), threads=torch.get_num_threads(),
            scale_input=int(model.ln0 is not None), eps=model.ln[0].eps,
            input_eps=model.ln0.eps if model.ln0 is not None else 0.0,
            emb_scale=model.emb_scale, state_weight=model.state_weight,
            hidden=hidden.data_ptr(), last_tokens=last.data_ptr(),
            emb=ctypes.cast(self.tables["emb"], _P), proj=ctypes.cast(self.tables["proj"], _P),
            ln_weight=ctypes.cast(self.tables["ln_weight"], _P), ln_bias=ctypes.cast(self.tables["ln_bias"], _P),
            head=ctypes.cast(self.tables["head"], _P),
            vocab_map=None if self.vocab_map is None else self.vocab_map.data_ptr(),
            state=state.data_ptr(), projected=projected.data_ptr(), logits=logits.data_ptr(),
            work=self.work.data_ptr(), out_tokens=out.data_ptr(), out_scores=scores.data_ptr(),
            out_second=None if second is None else second.data_ptr(),
            out_second_logp=None if second_logp is None else second_logp.data_ptr(),
            first_rank=None if rank is None else rank.data_ptr())
        loaded().mlp_chain(ctypes.byref(args))
        if second is not None:
            return out, scores, second, second_logp
        return out, scores
