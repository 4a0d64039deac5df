"""The Triton paged-attention kernel and the CUDA-graph decode path against the reference op.

Three tiers:
- CPU, always: the modules import without Triton; the kernel's plan (tiles, masks, key ranges) is
  checked by a torch emulation; padded decode batches (what the graphs replay) give the real rows'
  exact outputs and leave real cache blocks alone.
- Triton's interpreter, when Triton is installed and the run sets TRITON_INTERPRET=1: the real kernel
  on CPU tensors.
- GPU (`-m gpu`): the compiled kernel in float32/bfloat16/float16, dispatch from `paged_attention`,
  and captured graphs against eager decode.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from specserve.attention import triton_paged
from specserve.attention.metadata import AttentionMetadata
from specserve.attention.paged import paged_attention, reference_paged_attention, write_kv
from specserve.attention.triton_paged import TritonPlan, build_plan, tile_rows
from specserve.worker import cuda_graphs
from specserve.worker.cuda_graphs import DecodeBuffers, add_scratch_block, graph_batch_sizes, padded_size
from specserve.worker.input_batch import InputBatch, tree_mask

HAS_CUDA = torch.cuda.is_available()
INTERPRETED = triton_paged.HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
needs_gpu = pytest.mark.skipif(not (HAS_CUDA and triton_paged.HAS_TRITON), reason="needs CUDA and Triton")

# (cached tokens, new tokens, tree mask) per request; head counts (num_heads, num_kv_heads)
CASES = [
    ([(5, 1, False)], 4, (4, 2), 8),  # one decode
    ([(0, 7, False), (10, 5, True), (3, 1, False)], 4, (6, 1), 16),  # prefill + tree + decode, MQA
    ([(20, 40, False), (0, 9, True)], 16, (4, 4), 8),  # prefill with history, a tree from scratch
    ([(33, 6, True)], 1, (48, 1), 16),  # Granite-20B-like MQA group, block size 1
    ([(70, 1, False), (0, 1, False), (130, 1, False)], 16, (9, 3), 64),  # decode batch, SmolLM2 heads
]


def make_case(requests: list[tuple[int, int, bool]], block_size: int, heads: tuple[int, int], head_dim: int,
              dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Random caches with shuffled block tables, queries, and the metadata of one step."""
    gen = torch.Generator().manual_seed(seed)
    num_heads, num_kv_heads = heads
    total_blocks = sum((c + n + block_size - 1) // block_size for c, n, _ in requests) + 3
    k_cache = torch.zeros(total_blocks, block_size, num_kv_heads, head_dim)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(total_blocks, generator=gen).tolist()
    tables, seq_lens, qsl, masks, slots, queries = [], [], [0], [], [], []
    for cached, new, use_tree in requests:
        length = cached + new
        blocks = [free.pop() for _ in range((length + block_size - 1) // block_size)]
        all_slots = torch.tensor([blocks[p // block_size] * block_size + p % block_size
                                  for p in range(length)])
        write_kv(torch.randn(length, num_kv_heads, head_dim, generator=gen),
                 torch.randn(length, num_kv_heads, head_dim, generator=gen), k_cache, v_cache, all_slots)
        slots += all_slots[cached:].tolist()
        queries.append(torch.randn(new, num_heads, head_dim, generator=gen))
        custom = None
        if use_tree and new > 1:
            parents = [-1] + [int(torch.randint(-1, j, (1,), generator=gen)) for j in range(1, new - 1)]
            custom = tree_mask(1, parents)
        masks.append(custom)
        tables.append(blocks)
        seq_lens.append(length)
        qsl.append(qsl[-1] + new)
    width = max(len(t) for t in tables)
    table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)
    md = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
                           query_start_loc=qsl, seq_lens=seq_lens, block_tables=table.to(device),
                           block_size=block_size,
                           custom_masks=masks if any(m is not None for m in masks) else [])
    return torch.cat(queries).to(device, dtype), k_cache.to(device, dtype), v_cache.to(device, dtype), md


def emulate_kernel(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TritonPlan,
                   block_size: int, scale: float) -> torch.Tensor:
    """The kernel's indexing in torch: per tile, rows -> (token, head), its key range and mask rule,
    keys through the block table. Softmax over the whole range at once (the kernel's is online)."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = plan.num_queries_per_kv
    flat_k = k_cache.view(-1, num_kv_heads, head_dim).float()
    flat_v = v_cache.view(-1, num_kv_heads, head_dim).float()
    out = torch.full_like(query, float("nan"))
    for work in range(plan.num_work):
        req, row0 = int(plan.work_req[work]), int(plan.work_row0[work])
        q_start, q_len, seq_len = int(plan.q_start[req]), int(plan.q_len[req]), int(plan.seq_len[req])
        offset = int(plan.mask_offset[req])
        num_cached = seq_len - q_len
        rows = torch.arange(row0, min(row0 + plan.block_m, q_len * group))
        tok, head_in_group = rows // group, rows % group
        last_tok = (min(row0 + plan.block_m, q_len * group) - 1) // group
        kv_end = seq_len if offset >= 0 else num_cached + last_tok + 1
        n = torch.arange(kv_end)
        slots = plan.block_tables[req, n // block_size].long() * block_size + n % block_size
        new_idx = n - num_cached
        if offset >= 0:
            custom = plan.masks[offset:offset + q_len * q_len].view(q_len, q_len).bool()
            seen = (new_idx < 0).unsqueeze(0) | custom[tok][:, new_idx.clamp(min=0)]
        else:
            seen = new_idx.unsqueeze(0) <= tok.unsqueeze(1)
        for kv_head in range(num_kv_heads):
            heads = kv_head * group + head_in_group
            q = query[q_start + tok, heads].float()  # [rows, D]
            scores = (q @ flat_k[slots, kv_head].T) * scale
            probs = scores.masked_fill(~seen, float("-inf")).softmax(-1)
            out[q_start + tok, heads] = (probs @ flat_v[slots, kv_head]).to(query.dtype)
    return out


# ---- CPU, always ----------------------------------------------------------------------------------


def test_modules_import_without_triton() -> None:
    assert isinstance(triton_paged.HAS_TRITON, bool)
    assert cuda_graphs.CudaGraphRunner is not None
    if not triton_paged.HAS_TRITON:
        q, k, v, md = make_case(*CASES[0])
        with pytest.raises(RuntimeError, match="triton"):
            triton_paged.triton_paged_attention(q, k, v, md)


@pytest.mark.parametrize("query_lens, group, block_m", [
    ([1, 1, 1], 1, 16), ([1], 48, 64), ([6, 1], 48, 64), ([40], 4, 64), ([3, 2], 3, 16),
])
def test_tiles_cover_every_row_once(query_lens: list[int], group: int, block_m: int) -> None:
    got_block_m, work_req, work_row0 = tile_rows(query_lens, group)
    assert got_block_m == block_m
    covered = [(req, row) for req, row0 in zip(work_req, work_row0)
               for row in range(row0, min(row0 + block_m, query_lens[req] * group))]
    expected = [(req, row) for req, q in enumerate(query_lens) for row in range(q * group)]
    assert covered == expected


@pytest.mark.parametrize("group", [1, 3, 4, 16, 48])
def test_warmup_lengths_reach_every_tile_height(group: int) -> None:
    lens = triton_paged.warmup_query_lens(group)
    heights = [tile_rows([q], group)[0] for q in lens]
    assert heights == sorted(set(heights))  # each height once
    assert set(heights) == {tile_rows([q], group)[0] for q in range(1, 200)}  # and every height there is


def test_warmup_forwards_leave_the_cache_clean(tiny_llama_dir, tiny_bundle) -> None:
    """The start-up forwards write KV into blocks no request holds yet, zero them, and change nothing
    a request then sees; on the CPU the engine skips them altogether."""
    from specserve import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompts = ["The quick brown fox", "1, 2, 3,"]
    fresh = LLM(bundle=tiny_bundle, max_num_seqs=4)
    runner = fresh.engine.runner
    assert runner.warm_up_attention() == 0  # CPU: nothing to compile
    expected = [o.outputs[0].token_ids for o in fresh.generate(prompts, params)]
    warmed = LLM(bundle=tiny_bundle, max_num_seqs=4)
    assert warmed.engine.runner.run_warmup_forwards([1, 6, 40]) == 3
    assert all(not k.any() and not v.any() for k, v in warmed.engine.runner.kv_caches)
    assert [o.outputs[0].token_ids for o in warmed.generate(prompts, params)] == expected
    assert warmed.engine.kv.num_used_blocks == 0


@pytest.mark.parametrize("num_reqs", [1, 2, 3, 5, 8])
def test_plan_arrays_start_aligned(num_reqs: int) -> None:
    """Every integer array the kernel reads starts on a 16-byte boundary whatever the batch's counts
    (Triton compiles one variant per alignment pattern of its pointer arguments)."""
    q, k, v, md = make_case([(7 + i, 1 + i % 3, False) for i in range(num_reqs)], 16, (9, 3), 64)
    plan = triton_paged.build_plan(md, 3, torch.device("cpu"))
    for name in ("work_req", "work_row0", "q_start", "q_len", "seq_len", "mask_offset"):
        assert getattr(plan, name).data_ptr() % 16 == 0, name
    assert plan.q_len.tolist() == [1 + i % 3 for i in range(num_reqs)]
    assert plan.seq_len.tolist() == list(md.seq_lens)


def test_plan_packs_masks_and_offsets() -> None:
    q, k, v, md = make_case(*CASES[1])
    plan = build_plan(md, 6, torch.device("cpu"))
    assert plan.q_start.tolist() == md.query_start_loc[:-1] and plan.seq_len.tolist() == md.seq_lens
    assert plan.q_len.tolist() == [7, 5, 1] and plan.mask_offset.tolist() == [-1, 0, -1]
    assert torch.equal(plan.masks.view(5, 5).bool(), md.custom_masks[1])
    assert plan.work_req.dtype == torch.int32 and plan.masks.dtype == torch.int8


@pytest.mark.parametrize("case", range(len(CASES)))
def test_kernel_plan_emulation_matches_reference(case: int) -> None:
    requests, block_size, heads, head_dim = CASES[case]
    q, k, v, md = make_case(requests, block_size, heads, head_dim, seed=case)
    plan = build_plan(md, heads[0] // heads[1], torch.device("cpu"))
    expected = reference_paged_attention(q, k, v, md)
    torch.testing.assert_close(emulate_kernel(q, k, v, plan, block_size, head_dim ** -0.5), expected,
                               rtol=1e-5, atol=1e-5)


def test_graph_sizes_and_padding_choice() -> None:
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert graph_batch_sizes(5) == [1, 2, 4, 5] and graph_batch_sizes(1) == [1]
    sizes = graph_batch_sizes(40)
    assert [padded_size(n, sizes) for n in (1, 3, 9, 33, 40, 41)] == [1, 4, 16, 40, 40, None]


def test_padded_decode_batch_matches_unpadded(tiny_llama_model) -> None:
    """What a captured graph computes, run eagerly on CPU: the real rows of a padded decode batch equal
    the plain forward, and padding writes only the scratch block."""
    model = tiny_llama_model
    arch = model.arch
    block_size, num_blocks = 4, 12
    shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    gen = torch.Generator().manual_seed(0)
    kv = [(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
          for _ in range(arch.num_layers)]
    # three decoding requests with 6, 1 and 9 cached tokens on shuffled blocks
    tables, seq_lens = [[7, 2], [5], [0, 11, 3]], [7, 2, 10]
    positions = [s - 1 for s in seq_lens]
    slots = [t[p // block_size] * block_size + p % block_size for t, p in zip(tables, positions)]
    table = torch.tensor([t + [0] * (3 - len(t)) for t in tables])
    md = AttentionMetadata(slot_mapping=torch.tensor(slots), query_start_loc=[0, 1, 2, 3], seq_lens=seq_lens,
                           block_tables=table, block_size=block_size)
    batch = InputBatch(torch.tensor([5, 17, 30]), torch.tensor(positions), md, [0, 1, 2], [[], [], []])
    assert cuda_graphs.is_decode_only(md)
    eager_kv = [(k.clone(), v.clone()) for k, v in kv]
    with torch.inference_mode():
        expected = model(batch.input_ids, batch.positions, eager_kv, md)
    add_scratch_block(kv)
    assert kv[0][0].shape[0] == num_blocks + 1
    buffers = DecodeBuffers(8, 4, block_size, scratch_block=num_blocks, device=torch.device("cpu"))
    buffers.fill(batch, 4)
    padded_md = buffers.metadata(4, arch.num_heads // arch.num_kv_heads,
                                 host_seq_lens=buffers.seq_lens[:4].tolist())
    assert buffers.slot_mapping[3] == num_blocks * block_size and buffers.block_tables[3, 0] == num_blocks
    assert padded_md.cache["triton_plan"].num_work == 4
    with torch.inference_mode():
        got = model(buffers.input_ids[:4], buffers.positions[:4], kv, padded_md)
    torch.testing.assert_close(got[:3], expected, rtol=1e-5, atol=1e-5)
    for (k, v), (ek, ev) in zip(kv, eager_kv):  # equal up to matmul rounding at another batch size
        torch.testing.assert_close(k[:num_blocks], ek, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[:num_blocks], ev, rtol=1e-5, atol=1e-6)
    if INTERPRETED:  # the graphs' static plan through the real kernel
        q = torch.randn(4, arch.num_heads, arch.head_dim, generator=gen)
        k_cache, v_cache = kv[0]
        torch.testing.assert_close(triton_paged.triton_paged_attention(q, k_cache, v_cache, padded_md),
                                   reference_paged_attention(q, k_cache, v_cache, padded_md),
                                   rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_llama_model() -> torch.nn.Module:
    from specserve.model.arch_config import ModelArchConfig
    from specserve.model.llama import LlamaForCausalLM

    arch = ModelArchConfig.from_hf_config(dict(
        architectures=["LlamaForCausalLM"], hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=64, max_position_embeddings=64))
    torch.manual_seed(0)
    model = LlamaForCausalLM(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


# ---- Triton's interpreter (CPU) -------------------------------------------------------------------


@pytest.mark.skipif(not INTERPRETED, reason="set TRITON_INTERPRET=1 with Triton installed")
@pytest.mark.parametrize("case", range(len(CASES)))
def test_interpreted_kernel_matches_reference(case: int) -> None:
    requests, block_size, heads, head_dim = CASES[case]
    q, k, v, md = make_case(requests, block_size, heads, head_dim, seed=case)
    torch.testing.assert_close(triton_paged.triton_paged_attention(q, k, v, md),
                               reference_paged_attention(q, k, v, md), rtol=1e-5, atol=1e-5)


# ---- GPU ------------------------------------------------------------------------------------------

TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (5e-3, 5e-3)}
GPU_CASES = CASES + [
    ([(1000, 1, False)] * 8 + [(17, 1, False)] * 8, 16, (32, 8), 128),  # decode, Llama-1B-like heads
    ([(300, 5, True), (64, 4, False), (0, 200, False)], 16, (48, 1), 128),  # Granite-20B-code heads
    ([(4000, 1, False), (0, 512, False)], 16, (16, 16), 64),  # long context, a long prefill
]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", range(len(GPU_CASES)))
def test_gpu_kernel_matches_reference(case: int, dtype: torch.dtype) -> None:
    requests, block_size, heads, head_dim = GPU_CASES[case]
    q, k, v, md = make_case(requests, block_size, heads, head_dim, dtype=dtype, device="cuda", seed=case)
    rtol, atol = TOLERANCES[dtype]
    expected = reference_paged_attention(q, k, v, md)
    got = triton_paged.triton_paged_attention(q, k, v, md)
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    md.cache.clear()
    torch.testing.assert_close(paged_attention(q, k, v, md), expected, rtol=rtol, atol=atol)  # dispatch
    assert "triton_plan" in md.cache


@pytest.mark.gpu
@needs_gpu
def test_gpu_graph_replay_matches_eager(tiny_llama_model) -> None:
    from specserve.worker.cuda_graphs import CudaGraphRunner

    model = copy.deepcopy(tiny_llama_model).to("cuda")
    arch = model.arch
    block_size, num_blocks = 4, 40
    shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
    kv = [(torch.randn(shape, device="cuda"), torch.randn(shape, device="cuda"))
          for _ in range(arch.num_layers)]
    add_scratch_block(kv)
    runner = CudaGraphRunner(model, kv, block_size, num_blocks, max_batch_size=8, max_model_len=64)
    runner.capture()
    for step, n in enumerate((3, 1, 8, 5)):  # new lengths each replay
        tables = torch.randperm(num_blocks)[:n * 4].view(n, 4).cuda()
        seq_lens = [1 + (3 * i + 5 * step) % 16 for i in range(n)]  # 4 blocks of 4 per request
        positions = [s - 1 for s in seq_lens]
        slots = [int(tables[i, p // block_size]) * block_size + p % block_size
                 for i, p in enumerate(positions)]
        md = AttentionMetadata(slot_mapping=torch.tensor(slots, device="cuda"),
                               query_start_loc=list(range(n + 1)), seq_lens=seq_lens, block_tables=tables,
                               block_size=block_size)
        batch = InputBatch(torch.randint(0, 64, (n,), device="cuda"), torch.tensor(positions, device="cuda"),
                           md, list(range(n)), [[] for _ in range(n)])
        assert runner.can_run(batch)
        eager_kv = [(k.clone(), v.clone()) for k, v in kv]
        with torch.inference_mode():
            expected = model(batch.input_ids, batch.positions, eager_kv, md)
            got = runner.run(batch).clone()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        for (k, v), (ek, ev) in zip(kv, eager_kv):
            torch.testing.assert_close(k[:num_blocks], ek[:num_blocks])


@pytest.mark.gpu
@needs_gpu
def test_gpu_engine_greedy_matches_cpu(tiny_llama_dir, tiny_bundle, tmp_path) -> None:
    """The whole engine on CUDA (Triton attention; graphs on or off; plain, chain and tree speculation)
    gives the CPU engine's greedy tokens."""
    from specserve import LLM, SamplingParams
    from specserve.engine.model_setup import load_bundle
    from specserve.spec.checkpoint import save_mlp_speculator
    from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig

    arch = tiny_bundle.arch
    mlp = MLPSpeculator(MLPSpeculatorConfig(emb_dim=arch.hidden_size, vocab_size=arch.vocab_size, n_predict=3,
                                            inner_dim=32, top_k_tokens_per_head=(3, 2, 2), n_candidates=4))
    mlp.reset_parameters(torch.Generator().manual_seed(0))
    save_mlp_speculator(mlp, tmp_path / "mlp")
    prompts = ["The quick brown fox jumps over the lazy dog. The quick brown fox", "Hello", "1, 2, 3, 4, 5,"]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)

    def greedy(llm: LLM) -> list[list[int]]:
        return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]

    expected = greedy(LLM(bundle=tiny_bundle))
    cuda_bundle = load_bundle(str(tiny_llama_dir), "float32", "cuda")
    for graphs in (False, True):
        for spec in (None, "ngram", str(tmp_path / "mlp")):
            extra = {"speculator": spec, "speculation": "on"} if spec else {}
            llm = LLM(bundle=cuda_bundle, device="cuda", max_num_seqs=8, cuda_graphs=graphs, **extra)
            assert (llm.engine.runner.cuda_graphs is not None) == graphs
            assert greedy(llm) == expected, (graphs, spec)


@pytest.mark.gpu
@needs_gpu
def test_gpu_no_compile_after_warmup(tiny_bundle, tiny_llama_dir) -> None:
    """After the engine's start-up warm-up, serving (prefill, decode, verification of drafts, growing
    block tables) compiles no new variant of the attention kernel."""
    from specserve import LLM, SamplingParams
    from specserve.engine.model_setup import load_bundle

    def compiled_variants() -> int:  # Triton 3.x: device -> (kernel cache, ...) per device
        caches = getattr(triton_paged._paged_attention_kernel, "device_caches", None)
        if caches is None:
            pytest.skip("this Triton keeps its compiled kernels elsewhere")
        return sum(len(entry[0]) for entry in caches.values())

    llm = LLM(bundle=load_bundle(str(tiny_llama_dir), "float32", "cuda"), device="cuda", max_num_seqs=8,
              speculator="ngram", speculation="on")
    compiled = compiled_variants()
    assert compiled >= 1
    llm.generate(["1, 2, 3, 4, 5, 6, 7, 8, 9, 10," * 6, "Hello"],
                 SamplingParams(temperature=0, max_tokens=80, ignore_eos=True))
    assert compiled_variants() == compiled
