"""Shared by the tensor-parallel tests and the processes they spawn (importable by name in children)."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import torch

from specserve.attention.metadata import AttentionMetadata

VOCAB = 64  # words w0..w62 plus <eos> (id 0); divisible by 2
# Two requests: prefill chunks of different lengths, then batched decode steps (a request's positions
# continue from its cached length). Blocks of 4 slots, handed out shuffled.
STEPS: list[list[tuple[str, list[int]]]] = [
    [("a", [5, 9, 3, 17, 2]), ("b", [40, 41, 8, 8, 30, 12, 7])],
    [("a", [11]), ("b", [60])],
    [("a", [23, 24]), ("b", [1])],
    [("a", [61]), ("b", [33, 34, 35])],
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_word_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<eos>"] + [f"w{i}" for i in range(1, VOCAB)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="w1"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


def run_steps(model: torch.nn.Module, num_blocks: int = 32, block_size: int = 4) -> torch.Tensor:
    """Logits of every token of STEPS, concatenated: float32 [num_tokens, vocab]."""
    local = getattr(model, "local_arch", model.arch)  # this rank's KV heads under tensor parallelism
    dtype = model.get_input_embeddings().weight.dtype
    shape = (num_blocks, block_size, local.num_kv_heads, local.head_dim)
    kv = [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(local.num_layers)]
    free = list(range(num_blocks))
    random.Random(0).shuffle(free)
    blocks: dict[str, list[int]] = {}
    cached: dict[str, int] = {}
    out = []
    for step in STEPS:
        ids, positions, slots, starts, seq_lens = [], [], [], [0], []
        for req, tokens in step:
            owned = blocks.setdefault(req, [])
            start = cached.get(req, 0)
            end = start + len(tokens)
            while len(owned) * block_size < end:
                owned.append(free.pop())
            slots += [owned[p // block_size] * block_size + p % block_size for p in range(start, end)]
            ids += tokens
            positions += range(start, end)
            starts.append(starts[-1] + len(tokens))
            seq_lens.append(end)
            cached[req] = end
        width = max(len(blocks[req]) for req, _ in step)
        tables = torch.zeros(len(step), width, dtype=torch.long)
        for i, (req, _) in enumerate(step):
            tables[i, :len(blocks[req])] = torch.tensor(blocks[req])
        md = AttentionMetadata(slot_mapping=torch.tensor(slots), query_start_loc=starts, seq_lens=seq_lens,
                               block_tables=tables, block_size=block_size)
        with torch.inference_mode():
            hidden = model(torch.tensor(ids), torch.tensor(positions), kv, md)
            out.append(model.compute_logits(hidden))
    return torch.cat(out)


def parity_child(rank: int, world_size: int, port: int, model_dirs: list[str], out_dir: str) -> None:
    """One rank: load each model's shard, run STEPS, rank 0 saves the logits."""
    from specserve.distributed.parallel_state import destroy_tensor_parallel, init_tensor_parallel
    from specserve.distributed.shard_loading import load_sharded_model

    torch.set_num_threads(1)
    tp = init_tensor_parallel(rank, world_size, "cpu", f"tcp://127.0.0.1:{port}", timeout_s=60)
    for i, model_dir in enumerate(model_dirs):
        model, _ = load_sharded_model(Path(model_dir), torch.float32, tp)
        logits = run_steps(model)
        if rank == 0:
            torch.save(logits, Path(out_dir) / f"logits{i}.pt")
    destroy_tensor_parallel()
