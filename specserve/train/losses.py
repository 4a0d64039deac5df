"""Per-stage losses for speculator training.

Indexing (one cached sequence of length L, n_predict = P): the speculator reads the hidden state at
positions t = 0 .. L-P-2 and the tokens that follow them, ``token_ids[:, t] = input_ids[:, t + 1]``.
Stage i at position t has read input token t+1+i and must guess what the base model emits next
there: the label is the base model's greedy token at position t+1+i (``greedy_ids[:, t + 1 + i]``).
On the model's own greedy generations (phase 2) this is exactly the next token of the sequence; on
plain text (phase 1) it is what the base model would have said after that text, which is what
verification accepts, so the speculator learns the base model rather than the text.

A label counts only where position t may be trained on (``loss_mask``), the label position is a real
token, and the label is inside the heads' vocabulary (``vocab_map``); others are ignored.
Stage weights: acceptance of stage i needs every earlier stage right, so earlier stages weigh more;
the default is 1.0, 0.8, 0.64, ... (0.8 ** i), summed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE = -100


class StageBatch(NamedTuple):
    hidden: torch.Tensor  # [b, n, emb_dim]
    token_ids: torch.Tensor  # [b, n + n_predict]
    labels: torch.Tensor  # [n_predict, b, n] head-vocab ids or IGNORE


class LossResult(NamedTuple):
    loss: torch.Tensor  # weighted sum, scalar
    stage_losses: list[float]
    stage_acc: list[float]  # top-1 accuracy per stage over counted labels
    chain_acc: list[float]  # fraction of positions whose stages 0..i are all right (proxy for acceptance)
    num_labels: int


def head_index(vocab_map: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """[vocab_size] map from token id to head row (IGNORE where the heads cannot say the token)."""
    if vocab_map is None:
        return torch.arange(vocab_size)
    index = torch.full((vocab_size,), IGNORE, dtype=torch.long)
    index[vocab_map.long()] = torch.arange(len(vocab_map))
    return index


def stage_batch(shard: dict[str, torch.Tensor], n_predict: int, to_head: torch.Tensor) -> StageBatch:
    input_ids = shard["input_ids"].long()
    greedy = shard["greedy_ids"].long()
    mask = shard["loss_mask"]
    valid = torch.arange(input_ids.shape[1]) < shard["lengths"].view(-1, 1)  # [b, L] real tokens
    seq_len = input_ids.shape[1]
    n = seq_len - n_predict - 1
    labels = []
    for i in range(n_predict):
        lab = to_head[greedy[:, 1 + i:1 + i + n]]
        ok = mask[:, :n] & valid[:, 1 + i:1 + i + n]
        labels.append(torch.where(ok, lab, IGNORE))
    return StageBatch(shard["hidden"][:, :n].float(), input_ids[:, 1:1 + n + n_predict], torch.stack(labels))


def stage_weights(n_predict: int, decay: float = 0.8) -> list[float]:
    return [decay**i for i in range(n_predict)]


def speculator_loss(logits: torch.Tensor, labels: torch.Tensor, weights: list[float]) -> LossResult:
    """logits [P, b, n, V], labels [P, b, n]."""
    losses, accs, chain = [], [], []
    total = logits.new_zeros(())
    all_right = torch.ones_like(labels[0], dtype=torch.bool)
    counted = labels[0] != IGNORE
    for i in range(labels.shape[0]):
        lab = labels[i]
        loss = F.cross_entropy(logits[i].flatten(0, 1).float(), lab.flatten(), ignore_index=IGNORE)
        if torch.isnan(loss):  # no label in this batch for the stage
            loss = logits.new_zeros(())
        total = total + weights[i] * loss
        right = (logits[i].detach().argmax(-1) == lab) & (lab != IGNORE)
        num = int((lab != IGNORE).sum())
        losses.append(float(loss.detach()))
        accs.append(float(right.sum()) / max(num, 1))
        all_right &= right
        chain.append(float((all_right & counted).sum()) / max(int(counted.sum()), 1))
    return LossResult(total, losses, accs, chain, int(counted.sum()))
