"""Building blocks of Llama-family decoders: RMSNorm, rotary embeddings (with scaling variants), SwiGLU MLP.

All ops work on a flat token batch ([num_tokens, ...]); nothing assumes a batch dimension.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from specserve.distributed.layers import linear
from specserve.kernels import cpu_fused
from specserve.model.arch_config import RopeConfig

if TYPE_CHECKING:
    from specserve.distributed.parallel_state import TensorParallel


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.shape = (hidden_size,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = cpu_fused.add_rms_norm(x, None, self.weight, self.eps)
        if fused is not None:
            return fused[1]
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.shape, self.weight, self.eps)
        # Normalise in float32 and scale in the model dtype, as the HF reference does.
        return self.weight * F.rms_norm(x.float(), self.shape, eps=self.eps).to(x.dtype)

    def add_norm(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + h, norm(x + h)): the residual add and the next norm, one kernel call on CPU."""
        fused = cpu_fused.add_rms_norm(x, h, self.weight, self.eps)
        if fused is not None:
            return fused
        total = x + h
        return total, self(total)


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused into one matmul.

    Under tensor parallelism ``intermediate_size`` is this rank's columns and down_proj all-reduces."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool,
                 tp: TensorParallel | None = None) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = linear(intermediate_size, hidden_size, bias, tp, row_parallel=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)  # [num_tokens, 2 * intermediate]
        act = cpu_fused.silu_mul(gate_up)
        if act is None:
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
        return self.down_proj(act)


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # [dim / 2]


def _llama3_inv_freq(rope: RopeConfig, dim: int) -> torch.Tensor:
    inv_freq = _base_inv_freq(rope.theta, dim)
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are interpolated by `factor`, short ones kept, the band between blended smoothly.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(rope: RopeConfig, dim: int) -> tuple[torch.Tensor, float]:
    factor = rope.factor

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = rope.attention_factor
    if attention_factor is None:
        if rope.mscale and rope.mscale_all_dim:
            attention_factor = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
        else:
            attention_factor = mscale(factor)

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(rope.original_max_position_embeddings / (num_rotations * 2 * math.pi))
                / (2 * math.log(rope.theta)))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    pos_freqs = rope.theta ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight
    return inv_freq, float(attention_factor)


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim / 2] (float32, CPU) and the cos/sin scale for one rope config."""
    if rope.rope_type in ("default", "dynamic"):
        return _base_inv_freq(rope.theta, head_dim), 1.0
    if rope.rope_type == "linear":
        return _base_inv_freq(rope.theta, head_dim) / rope.factor, 1.0
    if rope.rope_type == "llama3":
        return _llama3_inv_freq(rope, head_dim), 1.0
    if rope.rope_type == "yarn":
        return _yarn_inv_freq(rope, head_dim)
    raise ValueError(f"unsupported rope type {rope.rope_type!r}")


class RotaryEmbedding(nn.Module):
    """cos/sin for each token's position, computed once per forward and shared by all layers.

    Dynamic NTK: a token at position p >= max_position_embeddings is rotated with the base HF would use for
    a sequence of length p + 1. Each key keeps the rotation it was cached with, so this equals HF's
    (whole-sequence) rescaling only within max_position_embeddings, where both use the plain base.
    """

    def __init__(self, rope: RopeConfig, head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.rope = rope
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        with torch.device("cpu"):  # real values even while the model is built on the meta device
            inv_freq, self.attention_scaling = rope_inv_freq(rope, head_dim)
        # A plain attribute, not a buffer, so meta-device construction and to_empty() leave it alone.
        self._inv_freq_cpu = inv_freq
        self._inv_freq: torch.Tensor | None = None
        self._exponents: torch.Tensor | None = None

    def _inv_freq_on(self, device: torch.device) -> torch.Tensor:
        if self._inv_freq is None or self._inv_freq.device != device:
            self._inv_freq = self._inv_freq_cpu.to(device)
            self._exponents = torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim
        return self._inv_freq

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._inv_freq_on(positions.device)
        pos = positions.float().unsqueeze(1)  # [num_tokens, 1]
        freqs = pos * inv_freq  # [num_tokens, head_dim / 2], float32
        if self.rope.rope_type == "dynamic":
            freqs = torch.where(pos >= self.max_position_embeddings, pos * self._dynamic_inv_freq(pos), freqs)
        cos, sin = freqs.cos(), freqs.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        # Full-width tables with the rotate-half sign folded into sin, so apply_rope is 3 ops per layer.
        cos = torch.cat((cos, cos), dim=-1)
        sin = torch.cat((-sin, sin), dim=-1)
        return cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype)  # [num_tokens, 1, head_dim]

    def _dynamic_inv_freq(self, pos: torch.Tensor) -> torch.Tensor:
        factor, dim, max_pos = self.rope.factor, self.head_dim, self.max_position_embeddings
        seq_len = torch.clamp(pos + 1, min=max_pos)  # [num_tokens, 1]
        base = self.rope.theta * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        assert self._exponents is not None
        return 1.0 / (base ** self._exponents)  # [num_tokens, head_dim / 2]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: x * cos + [x2, x1] * [-sin, sin].

    x: [num_tokens, num_heads, head_dim]; cos, sin: [num_tokens, 1, head_dim] from RotaryEmbedding."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat((x2, x1), dim=-1), sin)
