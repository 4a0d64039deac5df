"""Hidden states of the frozen base model over plain token sequences, outside the engine.

One forward pass per batch of sequences on a throwaway paged KV cache whose blocks are laid out
contiguously (request i owns blocks ``i * blocks_per_seq ...``). Besides the last hidden state (after
the final norm, what feeds the LM head and the speculator), the pass keeps the base model's greedy
token at each position: the labels the speculator learns to reproduce.

A shard on disk is a dict of: ``hidden`` [num_seqs, seq_len, emb_dim] (bfloat16), ``input_ids`` and
``greedy_ids`` [num_seqs, seq_len] (int32), ``loss_mask`` [num_seqs, seq_len] (bool: positions whose
hidden state the speculator may train on, e.g. only response tokens in phase 2), ``lengths`` [num_seqs].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from specserve.attention.metadata import AttentionMetadata

PAD_ID = 0


class HiddenStateExtractor:
    def __init__(self, model: nn.Module, block_size: int = 16) -> None:
        self.model = model
        self.arch = model.arch
        self.block_size = block_size
        weight = model.get_input_embeddings().weight
        self.dtype, self.device = weight.dtype, weight.device

    @torch.inference_mode()
    def run(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences (any lengths) -> hidden [b, max_len, d] float32 and greedy ids [b, max_len] (padded),
        on the CPU whatever the model's device."""
        lens = [len(s) for s in seqs]
        max_len = max(lens)
        bs = self.block_size
        blocks_per_seq = -(-max_len // bs)
        num_blocks = blocks_per_seq * len(seqs)
        shape = (num_blocks, bs, self.arch.num_kv_heads, self.arch.head_dim)
        dev = self.device
        kv = [(torch.zeros(shape, dtype=self.dtype, device=dev), torch.zeros(shape, dtype=self.dtype, device=dev))
              for _ in range(self.arch.num_layers)]
        md = AttentionMetadata.contiguous_prompts(lens, bs, dev)
        query_start_loc = md.query_start_loc
        input_ids = torch.tensor([t for s in seqs for t in s], device=dev)
        positions = torch.cat([torch.arange(n) for n in lens]).to(dev)
        hidden = self.model(input_ids, positions, kv, md)  # [num_tokens, d]
        greedy = self.model.compute_logits(hidden).argmax(-1).cpu()  # [num_tokens]
        hidden = hidden.float().cpu()
        out_h = torch.zeros(len(seqs), max_len, hidden.shape[-1])
        out_g = torch.full((len(seqs), max_len), PAD_ID, dtype=torch.long)
        for i, n in enumerate(lens):
            out_h[i, :n] = hidden[query_start_loc[i]:query_start_loc[i + 1]]
            out_g[i, :n] = greedy[query_start_loc[i]:query_start_loc[i + 1]]
        return out_h, out_g


def make_shard(extractor: HiddenStateExtractor, seqs: list[list[int]],
               masks: list[list[bool]] | None = None) -> dict[str, torch.Tensor]:
    hidden, greedy = extractor.run(seqs)
    b, n = greedy.shape
    input_ids = torch.full((b, n), PAD_ID, dtype=torch.int32)
    loss_mask = torch.zeros(b, n, dtype=torch.bool)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.int32)
        loss_mask[i, :len(s)] = torch.tensor(masks[i]) if masks is not None else True
    return {"hidden": hidden.to(torch.bfloat16), "input_ids": input_ids,
            "greedy_ids": greedy.to(torch.int32), "loss_mask": loss_mask,
            "lengths": torch.tensor([len(s) for s in seqs])}


def write_shards(extractor: HiddenStateExtractor, seqs: list[list[int]], out_dir: Path, batch_size: int,
                 masks: list[list[bool]] | None = None, progress: object | None = None,
                 first_index: int = 0) -> list[Path]:
    """Cache shards of ``batch_size`` sequences, numbered from ``first_index``; shards already on disk
    are kept (resume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(seqs), batch_size):
        path = out_dir / f"shard_{first_index + start // batch_size:05d}.pt"
        if not path.exists():
            shard = make_shard(extractor, seqs[start:start + batch_size],
                               None if masks is None else masks[start:start + batch_size])
            torch.save(shard, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)  # never a half-written shard
        paths.append(path)
        if progress is not None:
            progress.update(sum(len(s) for s in seqs[start:start + batch_size]))  # type: ignore[attr-defined]
    return paths
