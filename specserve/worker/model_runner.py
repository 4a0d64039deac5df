"""The model runner: owns the KV cache tensors, executes one SchedulerOutput, samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from specserve.core.outputs import RequestStepResult, ScheduledRequest, SchedulerOutput
from specserve.request import Request
from specserve.sample.sampler import Sampler, SamplingState
from specserve.spec.decoder import SpecDecoder
from specserve.spec.draft_tree import DraftTree
from specserve.spec.proposer import ProposalRequest
from specserve.spec.rejection_sampler import VerifyInput
from specserve.worker.input_batch import InputBatch, build_input_batch

if TYPE_CHECKING:
    from specserve.worker.cuda_graphs import CudaGraphRunner

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
        self.spec: SpecDecoder | None = None
        self.max_spec_depth = 0
        self.max_spec_candidates = 1
        self.cuda_graphs: CudaGraphRunner | None = None  # CUDA only, opt-in: enable_cuda_graphs
        self.last_step_graphed = False  # whether the latest forward replayed a CUDA graph

    def enable_cuda_graphs(self, max_batch_size: int, max_model_len: int) -> bool:
        """Capture decode steps as CUDA graphs (see worker/cuda_graphs.py); False where unavailable.

        Adds one scratch block to the KV tensors (padding rows write there), so call it before serving."""
        from specserve.attention.triton_paged import HAS_TRITON
        from specserve.worker.cuda_graphs import CudaGraphRunner, add_scratch_block

        if self.device.type != "cuda" or not HAS_TRITON:
            return False
        if self.cuda_graphs is None:
            add_scratch_block(self.kv_caches)
        self.cuda_graphs = CudaGraphRunner(self.model, self.kv_caches, self.block_size, self.num_blocks,
                                           max_batch_size, max_model_len)
        self.cuda_graphs.capture()
        self._tell_policy_about_graphs()
        return True

    def warm_up_attention(self) -> int:
        """On CUDA with Triton, compile every attention tile height now (see
        triton_paged.warmup_query_lens); returns the forward passes run (0 elsewhere)."""
        from specserve.attention.triton_paged import HAS_TRITON, warmup_query_lens

        if self.device.type != "cuda" or not HAS_TRITON:
            return 0
        arch = self.model.arch
        return self.run_warmup_forwards(warmup_query_lens(arch.num_heads // arch.num_kv_heads))

    @torch.inference_mode()
    def run_warmup_forwards(self, query_lens: list[int]) -> int:
        """One throwaway forward per length, as a prompt at the start of the first blocks, which no
        request holds yet; those blocks are zeroed afterwards."""
        from specserve.attention.metadata import AttentionMetadata

        runs = 0
        for q in query_lens:
            num = -(-q // self.block_size)
            if num > self.num_blocks:
                continue
            runs += 1
            md = AttentionMetadata.contiguous_prompts([q], self.block_size, self.device)
            self.model(torch.zeros(q, dtype=torch.long, device=self.device), torch.arange(q, device=self.device),
                       self.kv_caches, md)
            for k_cache, v_cache in self.kv_caches:
                k_cache[:num].zero_()
                v_cache[:num].zero_()
        return runs

    def _tell_policy_about_graphs(self) -> None:
        # The policy times replayed plain steps apart from eager ones (spec/policy.py).
        if self.spec is not None and self.cuda_graphs is not None:
            self.spec.policy.graph_max_batch = max(self.cuda_graphs.sizes)

    def attach_speculator(self, spec: SpecDecoder, max_depth: int, max_candidates: int) -> None:
        self.spec = spec
        self.max_spec_depth = max_depth
        self.max_spec_candidates = max_candidates
        self._tell_policy_about_graphs()

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

    def release(self, request_ids: list[str]) -> None:
        """Drop per-request state (RNG, speculator caches) of finished requests; idempotent."""
        for request_id in request_ids:
            self.generators.pop(request_id, None)
            if self.spec is not None:
                self.spec.release(request_id)

    @torch.inference_mode()
    def forward(self, out: SchedulerOutput) -> tuple[InputBatch, torch.Tensor]:
        self.release(out.finished_request_ids)
        self.copy_blocks(out.block_copies)
        batch = build_input_batch(out, self.block_size, self.device)
        self.last_step_graphed = self.cuda_graphs is not None and self.cuda_graphs.can_run(batch)
        if self.last_step_graphed:
            return batch, self.cuda_graphs.run(batch)
        hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn)
        return batch, hidden

    def _state(self, request: Request) -> SamplingState:
        return SamplingState(
            params=request.params,
            prompt_token_ids=request.prompt_token_ids,
            output_token_ids=request.output_token_ids,
            generator=self._generator(request.request_id, request.params.seed),
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> dict[str, RequestStepResult]:
        """Run one step: sample (or verify drafts) for every request that reached its end, then
        propose the next drafts when a speculator is attached."""
        batch, hidden = self.forward(out)
        items = [(i, item) for i, item in enumerate(out.scheduled) if item.needs_sample]
        if not items:
            return {}
        results: dict[str, RequestStepResult] = {}
        if any(item.spec_token_ids for _, item in items):
            last_rows = self._verify(batch, hidden, items, results)
        else:
            last_rows = self._sample(batch, hidden, items, results)
        if self.spec is not None:
            self._propose(out, hidden, items, last_rows, results)
        return results

    def _sample(self, batch: InputBatch, hidden: torch.Tensor, items: list[tuple[int, ScheduledRequest]],
                results: dict[str, RequestStepResult]) -> list[int]:
        rows = [batch.last_rows[i] for i, _ in items]
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        sampled = self.sampler.sample(logits, [self._state(item.request) for _, item in items],
                                      self.eos_token_ids)
        for j, (_, item) in enumerate(items):
            logprobs = [sampled.logprobs[j]] if sampled.logprobs[j] is not None else []
            results[item.request_id] = RequestStepResult(item.request_id, [sampled.token_ids[j]], logprobs)
        return rows

    def _verify(self, batch: InputBatch, hidden: torch.Tensor, items: list[tuple[int, ScheduledRequest]],
                results: dict[str, RequestStepResult]) -> list[int]:
        assert self.spec is not None
        rows: list[int] = []
        inputs: list[VerifyInput] = []
        for i, item in items:
            inputs.append(VerifyInput(DraftTree(item.spec_token_ids, item.spec_parents),
                                      self._state(item.request), len(rows)))
            rows.append(batch.last_rows[i])
            rows.extend(batch.draft_rows[i])
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        verified = self.spec.verify(logits, [item.request_id for _, item in items], inputs, self.eos_token_ids)
        moves_src: list[int] = []
        moves_dst: list[int] = []
        for (_, item), result in zip(items, verified):
            first_draft = item.num_computed_tokens + item.num_new_tokens
            for k, node in enumerate(result.accepted_nodes):
                if node != k:  # a tree path: move its KV to the front of the draft slots
                    moves_src.append(self._slot(item.block_ids, first_draft + node))
                    moves_dst.append(self._slot(item.block_ids, first_draft + k))
            results[item.request_id] = RequestStepResult(
                item.request_id, result.token_ids, list(result.logprobs),
                num_draft_tokens=len(item.spec_token_ids), num_accepted_draft_tokens=len(result.accepted_nodes))
        self._move_slots(moves_src, moves_dst)
        return [rows[result.last_row] for result in verified]

    def _slot(self, block_ids: list[int], index: int) -> int:
        return block_ids[index // self.block_size] * self.block_size + index % self.block_size

    def _move_slots(self, src: list[int], dst: list[int]) -> None:
        if not src:
            return
        src_t = torch.tensor(src, device=self.device)
        dst_t = torch.tensor(dst, device=self.device)
        for k_cache, v_cache in self.kv_caches:
            for cache in (k_cache, v_cache):
                flat = cache.view(-1, cache.shape[2], cache.shape[3])
                flat.index_copy_(0, dst_t, flat.index_select(0, src_t))  # gather first: no overlap hazard

    def _propose(self, out: SchedulerOutput, hidden: torch.Tensor, items: list[tuple[int, ScheduledRequest]],
                 last_rows: list[int], results: dict[str, RequestStepResult]) -> None:
        assert self.spec is not None
        num_other = out.num_batched_tokens - sum(item.num_scheduled_tokens for _, item in items)
        levels = self.spec.choose([item.request_id for _, item in items], num_other)
        # Only requests that speculate next step need a proposal request (a copy of their tokens).
        chosen = [k for k, level in enumerate(levels) if level.depth > 0]
        if not chosen:
            return
        requests: list[ProposalRequest] = []
        for k in chosen:
            item = items[k][1]
            request = item.request
            emitted = results[item.request_id].token_ids
            remaining = request.max_output_tokens - request.num_output_tokens - len(emitted)
            requests.append(ProposalRequest(
                request_id=item.request_id, token_ids=request.token_ids + emitted,
                num_prompt_tokens=request.num_prompt_tokens,
                max_depth=max(0, min(self.max_spec_depth, remaining - 1)),
                num_candidates=self.max_spec_candidates))
        rows_hidden = None
        if self.spec.proposer.needs_hidden:
            rows_hidden = hidden[torch.tensor([last_rows[k] for k in chosen], device=self.device)]
        for k, tree in zip(chosen, self.spec.propose(requests, rows_hidden)):
            result = results[items[k][1].request_id]
            result.next_spec_token_ids = tree.token_ids
            result.next_spec_parents = tree.parents
