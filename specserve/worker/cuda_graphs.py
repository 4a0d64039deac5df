"""CUDA graphs for decode steps: the whole model forward replayed as one graph per padded batch size.

A decode step (every request has exactly one new token, no draft tree) at small batch is bound by
kernel launch overhead, not by the GPU. We capture the forward once per batch size in
`graph_batch_sizes` and replay it with the inputs copied into static buffers:

- a batch of n requests runs in the graph of the smallest captured size b >= n; rows n..b-1 are
  padding: token 0 at position 0, writing its K/V to a scratch slot and attending only to that slot
  (seq_len 1), so padding never touches a real request's cache. The scratch block is one extra block
  appended to every layer's KV tensor (id = the pool's num_blocks, never handed out by the scheduler);
- attention reads its per-step plan (triton_paged.TritonPlan) from device tensors, so the captured
  kernel launches stay valid when seq_lens and block tables change between replays. The plan's tile
  list depends only on b, so it is built once per graph;
- anything else (prefill chunks, speculative verification, batches above the largest size, contexts
  wider than the static block table) runs eagerly.

Only the model runner uses this, and only on CUDA with Triton (`ModelRunner.enable_cuda_graphs`).
"""

from __future__ import annotations

import torch
from torch import nn

from specserve.attention import triton_paged
from specserve.attention.metadata import AttentionMetadata
from specserve.worker.input_batch import InputBatch

KVCache = tuple[torch.Tensor, torch.Tensor]


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16, up to and including max_batch_size."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    sizes += list(range(16, max_batch_size, 16))
    return sorted(set(sizes + [max_batch_size]))


def padded_size(num_reqs: int, sizes: list[int]) -> int | None:
    return next((b for b in sizes if b >= num_reqs), None)


def is_decode_only(md: AttentionMetadata) -> bool:
    """One new token per request and no custom masks (what the captured graphs assume)."""
    return not md.custom_masks and md.query_start_loc[-1] == md.num_reqs


def add_scratch_block(kv_caches: list[KVCache]) -> None:
    """Give each layer's K and V one more block at the end, in place; contents kept. One layer at a
    time, so the peak extra memory is a single layer's cache, not the whole pool."""
    for i, (k_cache, v_cache) in enumerate(kv_caches):
        kv_caches[i] = (_grown(k_cache), _grown(v_cache))


def _grown(cache: torch.Tensor) -> torch.Tensor:
    bigger = cache.new_zeros((cache.shape[0] + 1, *cache.shape[1:]))
    bigger[:-1].copy_(cache)
    return bigger


class DecodeBuffers:
    """Static inputs of the captured graphs, sized for the largest batch; graph b uses rows [:b]."""

    def __init__(self, max_batch_size: int, max_blocks_per_req: int, block_size: int, scratch_block: int,
                 device: torch.device) -> None:
        b = max_batch_size
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.input_ids = torch.zeros(b, dtype=torch.long, device=device)
        self.positions = torch.zeros(b, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((b,), scratch_block * block_size, dtype=torch.long, device=device)
        self.block_tables = torch.full((b, max_blocks_per_req), scratch_block, dtype=torch.long,
                                       device=device)
        self.seq_lens = torch.ones(b, dtype=torch.int32, device=device)

    @property
    def max_blocks_per_req(self) -> int:
        return int(self.block_tables.shape[1])

    def fill(self, batch: InputBatch, size: int) -> None:
        """Copy a decode batch of n <= size requests into rows [:n]; rows [n:size] become padding."""
        md = batch.attn
        n = md.num_reqs
        width = md.block_tables.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.slot_mapping[:n].copy_(md.slot_mapping, non_blocking=True)
        self.block_tables[:n, :width].copy_(md.block_tables, non_blocking=True)
        seq_lens = torch.tensor(list(md.seq_lens) + [1] * (size - n), dtype=torch.int32)
        self.seq_lens[:size].copy_(seq_lens, non_blocking=True)
        if size > n:
            self.input_ids[n:size].zero_()
            self.positions[n:size].zero_()
            self.slot_mapping[n:size].fill_(self.scratch_block * self.block_size)
            self.block_tables[n:size, 0].fill_(self.scratch_block)

    def metadata(self, size: int, num_queries_per_kv: int, host_seq_lens: list[int] | None = None
                 ) -> AttentionMetadata:
        """Metadata over rows [:size] whose Triton plan points into these buffers.

        The host lists are placeholders (a graph cannot see them change); ``host_seq_lens`` makes them
        real, for running the padded batch eagerly on a path that reads them (CPU tests)."""
        block_m, work_req, work_row0 = triton_paged.tile_rows([1] * size, num_queries_per_kv)
        device = self.input_ids.device
        parts = triton_paged.aligned_int32([work_req, work_row0, list(range(size)), [1] * size, [-1] * size], device)
        plan = triton_paged.TritonPlan(
            work_req=parts[0], work_row0=parts[1], q_start=parts[2], q_len=parts[3],
            seq_len=self.seq_lens[:size], mask_offset=parts[4],
            masks=torch.zeros(1, dtype=torch.int8, device=device), block_tables=self.block_tables[:size],
            block_m=block_m, num_queries_per_kv=num_queries_per_kv)
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=list(range(size + 1)),
            seq_lens=host_seq_lens if host_seq_lens is not None else [1] * size,
            block_tables=self.block_tables[:size], block_size=self.block_size, cache={"triton_plan": plan})


class CudaGraphRunner:
    """Captures `model(input_ids, positions, kv_caches, md)` for decode batches; replays it."""

    def __init__(self, model: nn.Module, kv_caches: list[KVCache], block_size: int, scratch_block: int,
                 max_batch_size: int, max_model_len: int) -> None:
        arch = model.arch
        self.model = model
        self.kv_caches = kv_caches
        self.num_queries_per_kv = arch.num_heads // arch.num_kv_heads
        self.sizes = graph_batch_sizes(max_batch_size)
        device = kv_caches[0][0].device
        max_blocks = (max_model_len + block_size - 1) // block_size
        self.buffers = DecodeBuffers(self.sizes[-1], max_blocks, block_size, scratch_block, device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # graph size -> its static output [size, hidden]
        self.metadata: dict[int, AttentionMetadata] = {}

    def can_run(self, batch: InputBatch) -> bool:
        md = batch.attn
        size = padded_size(md.num_reqs, self.sizes)
        return (size in self.graphs and is_decode_only(md)
                and md.block_tables.shape[1] <= self.buffers.max_blocks_per_req)

    def _forward(self, size: int) -> torch.Tensor:
        b = self.buffers
        return self.model(b.input_ids[:size], b.positions[:size], self.kv_caches, self.metadata[size])

    @torch.inference_mode()
    def capture(self) -> None:
        if not (torch.cuda.is_available() and triton_paged.HAS_TRITON):
            raise RuntimeError("CUDA graphs need a CUDA device and Triton")
        pool = torch.cuda.graph_pool_handle()
        for size in sorted(self.sizes, reverse=True):  # largest first: later graphs reuse its pool
            self.metadata[size] = self.buffers.metadata(size, self.num_queries_per_kv)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up: Triton compiles, lazy caches fill
                for _ in range(2):
                    self._forward(size)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[size] = self._forward(size)
            self.graphs[size] = graph
        torch.cuda.synchronize()

    def run(self, batch: InputBatch) -> torch.Tensor:
        """Hidden states [num_reqs, hidden] of a decode batch (a view into the graph's output)."""
        n = batch.attn.num_reqs
        size = padded_size(n, self.sizes)
        assert size is not None and size in self.graphs, "call can_run first"
        self.buffers.fill(batch, size)
        self.graphs[size].replay()
        return self.outputs[size][:n]
