"""The model runner: owns the KV cache tensors, executes one SchedulerOutput, samples."""

from __future__ import annotations

import torch
from torch import nn

from specserve.core.outputs import RequestStepResult, SchedulerOutput
from specserve.sample.sampler import Sampler, SamplingState
from specserve.worker.input_batch import InputBatch, build_input_batch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def kv_bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                       dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * element


class ModelRunner:
    def __init__(self, model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                 num_blocks: int, block_size: int, eos_token_ids: list[int],
                 dtype: torch.dtype, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.eos_token_ids = list(eos_token_ids)
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        # [num_blocks, block_size, num_kv_heads, head_dim] per layer, for K and for V
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device),
                           torch.zeros(shape, dtype=dtype, device=device)) for _ in range(num_layers)]
        self.sampler = Sampler()
        self.generators: dict[str, torch.Generator] = {}
        # Hidden states of the last forward for rows that were sampled (speculators read them).
        self.last_hidden: dict[str, torch.Tensor] = {}

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src = torch.tensor([c[0] for c in copies], device=self.device)
        dst = torch.tensor([c[1] for c in copies], device=self.device)
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]

    def _generator(self, request_id: str, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        gen = self.generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
            self.generators[request_id] = gen
        return gen

    @torch.inference_mode()
    def forward(self, out: SchedulerOutput) -> tuple[InputBatch, torch.Tensor]:
        for request_id in out.finished_request_ids:
            self.generators.pop(request_id, None)
        self.copy_blocks(out.block_copies)
        batch = build_input_batch(out, self.block_size, self.device)
        hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)
        return batch, hidden

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[str, RequestStepResult]:
        """Run one step without speculation: sample one token for every request that reached its end."""
        batch, hidden = self.forward(out)
        rows: list[int] = []
        states: list[SamplingState] = []
        ids: list[str] = []
        for i, item in enumerate(out.scheduled):
            if not item.needs_sample:
                continue
            request = item.request
            rows.append(batch.last_rows[i])
            ids.append(request.request_id)
            states.append(SamplingState(
                params=request.params,
                prompt_token_ids=request.prompt_token_ids,
                output_token_ids=request.output_token_ids,
                generator=self._generator(request.request_id, request.params.seed),
            ))
        if not rows:
            return {}
        row_index = torch.tensor(rows, device=self.device)
        logits = self.model.compute_logits(hidden[row_index])
        sampled = self.sampler.sample(logits, states, self.eos_token_ids)
        results: dict[str, RequestStepResult] = {}
        for j, request_id in enumerate(ids):
            logprobs = [sampled.logprobs[j]] if sampled.logprobs[j] is not None else []
            results[request_id] = RequestStepResult(request_id, [sampled.token_ids[j]], logprobs)
        return results
