"""The MLP speculator's chain proposal matches its teacher-forced pass and the tree search."""

from __future__ import annotations

import pytest
import torch

from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig


def make_speculator(head_vocab: int) -> MLPSpeculator:
    model = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, tie_weights=True, scale_input=True,
                                              head_vocab_size=head_vocab))
    model.reset_parameters(torch.Generator().manual_seed(3))
    if head_vocab:
        model.vocab_map = torch.randperm(200, generator=torch.Generator().manual_seed(4))[:head_vocab].sort().values
    return model.eval()


@pytest.mark.parametrize("head_vocab", [0, 64])
def test_chain_is_each_stage_argmax_of_the_teacher_forced_pass(head_vocab: int) -> None:
    model = make_speculator(head_vocab)
    hidden, last = torch.randn(5, 48, generator=torch.Generator().manual_seed(5)), torch.tensor([1, 7, 9, 150, 3])
    paths, scores = model.propose_paths(hidden, last, [1, 1, 1], 1)
    assert paths.shape == (5, 1, 3) and scores.shape == (5, 1)
    # Feed the chain back teacher-forced: stage i must pick exactly the token the chain holds.
    tokens = torch.cat([last.view(5, 1), paths[:, 0, :]], dim=1)  # [b, 1 + 3]
    logits = model(hidden.unsqueeze(1), tokens).squeeze(2)  # [3, b, head_vocab]
    want = model.head_to_vocab(logits.argmax(-1)).T  # [b, 3]
    assert torch.equal(paths[:, 0, :], want)
    logp = torch.log_softmax(logits.float(), -1).max(-1).values.sum(0)
    torch.testing.assert_close(scores[:, 0], logp, rtol=1e-5, atol=1e-5)


def test_chain_is_the_best_path_of_a_tree_that_contains_it() -> None:
    # With top-k 2 per stage the tree holds the greedy chain; its score must be the chain's score.
    model = make_speculator(64)
    hidden, last = torch.randn(4, 48, generator=torch.Generator().manual_seed(6)), torch.tensor([2, 5, 8, 13])
    chain, chain_score = model.propose_paths(hidden, last, [1, 1, 1], 1)
    tree, tree_scores = model.propose_paths(hidden, last, [2, 2, 2], 8)
    for b in range(4):
        match = (tree[b] == chain[b, 0]).all(-1).nonzero()
        assert len(match) == 1
        torch.testing.assert_close(tree_scores[b, match[0, 0]], chain_score[b, 0], rtol=1e-5, atol=1e-5)
