"""An MLP speculator's single-chain proposal, and its beam, in one kernel call on CPU
(kernels/cpu_speculator.c).

``CpuChain.propose(hidden, token_ids, depth)`` returns the same kind of result as the PyTorch chain
(each stage's argmax fed to the next stage), without its ~25 small ops per proposal;
``CpuChain.propose_beam`` the same as ``MLPSpeculator.propose_beam``. It applies when the
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
                                           "out_scores")])


class MlpBeamArgs(ctypes.Structure):  # mirrors MlpBeam in cpu_speculator.c
    _fields_ = [("chain", ctypes.POINTER(MlpChainArgs)), ("width", _I)] + [
        (name, _P) for name in ("next_state", "row_tokens", "row_logp", "out_tokens", "out_logp", "out_source")]


BEAM_MAX_WIDTH = 8  # as in cpu_speculator.c


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

    def applies(self, hidden: torch.Tensor, rows_per_request: int = 1) -> bool:
        return (hidden.device.type == "cpu" and hidden.dtype == self.dtype and hidden.dim() == 2
                and 1 <= hidden.shape[0] * rows_per_request <= PACKED_MAX_ROWS[self.dtype]
                and not torch.is_grad_enabled())

    def _args(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int,
              rows: int) -> tuple[MlpChainArgs, list[torch.Tensor]]:
        """The kernel's arguments for ``hidden``'s requests with scratch for ``rows`` rows, and the
        tensors they point at (kept alive by the caller until the call returns)."""
        model, config = self.model, self.model.config
        if not 0 < depth <= self.max_depth:
            raise ValueError(f"chain depth {depth} is outside 1..{self.max_depth}")
        hidden = hidden.contiguous()
        last = token_ids.to(torch.int64).contiguous()
        state = torch.empty(rows, max(config.emb_dim, config.inner), dtype=self.dtype)
        projected = torch.empty(rows, config.inner, dtype=self.dtype)
        head_rows = model.head[0].weight.shape[0]
        logits = torch.empty(rows, head_rows, dtype=self.dtype)
        args = MlpChainArgs(
            M=hidden.shape[0], depth=depth, emb_dim=config.emb_dim, inner=config.inner, head_rows=head_rows,
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
            work=self.work.data_ptr())
        return args, [hidden, last, state, projected, logits]

    def propose(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [M, emb_dim], token_ids [M] -> the chain's tokens [M, depth] and log-probabilities [M]."""
        m = hidden.shape[0]
        args, alive = self._args(hidden, token_ids, depth, m)  # alive until the call returns
        out = torch.empty(m, depth, dtype=torch.int64)
        scores = torch.zeros(m)
        args.out_tokens, args.out_scores = out.data_ptr(), scores.data_ptr()
        loaded().mlp_chain(ctypes.byref(args))
        return out, scores

    def propose_beam(self, hidden: torch.Tensor, token_ids: torch.Tensor, depth: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The beam of ``MLPSpeculator.propose_beam`` in one kernel call: (tokens, logp, source)."""
        if not 2 <= width <= BEAM_MAX_WIDTH:
            raise ValueError(f"beam width {width} is outside 2..{BEAM_MAX_WIDTH}")
        m = hidden.shape[0]
        args, alive = self._args(hidden, token_ids, depth, m * width)  # alive until the call returns
        next_state = torch.empty(m * width, self.model.config.inner, dtype=self.dtype)
        row_tokens = torch.empty(m * width, dtype=torch.int64)
        row_logp = torch.empty(m * width)
        tokens = torch.empty(m, depth, width, width, dtype=torch.int64)
        logp = torch.empty(m, depth, width, width)
        source = torch.empty(m, depth, width, dtype=torch.int64)
        beam = MlpBeamArgs(chain=ctypes.pointer(args), width=width, next_state=next_state.data_ptr(),
                           row_tokens=row_tokens.data_ptr(), row_logp=row_logp.data_ptr(),
                           out_tokens=tokens.data_ptr(), out_logp=logp.data_ptr(), out_source=source.data_ptr())
        loaded().mlp_beam(ctypes.byref(beam))
        return tokens, logp, source
