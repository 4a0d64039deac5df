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


def test_tied_stages_repeat_past_n_predict() -> None:
    # Steps past n_predict run the last tied stage again, with the state weight of training.
    model = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, tie_weights=True, scale_input=True,
                                              num_lookahead_tokens=6))
    model.reset_parameters(torch.Generator().manual_seed(3))
    model.eval()
    assert [model.stage_index(i) for i in range(6)] == [0, 1, 2, 2, 2, 2]
    assert model.state_weight == 0.5 ** (0.5 / 3)
    with pytest.raises(IndexError):
        model.stage_index(6)
    hidden, last = torch.randn(3, 48, generator=torch.Generator().manual_seed(5)), torch.tensor([1, 7, 9])
    paths, _ = model.propose_paths(hidden, last, [1] * 6, 1)
    state, token, want = model.input_state(hidden), last, []
    with torch.no_grad():
        for i in range(6):
            w = min(i, 2)  # by hand: the stage's own modules
            z = model.emb[w](token) * model.emb_scale
            state = torch.nn.functional.gelu(model.ln[w](model.proj[w](state) * model.state_weight + z))
            token = model.head[w](state).argmax(-1)
            want.append(token)
    assert torch.equal(paths[:, 0, :], torch.stack(want, dim=1))
    # the first three steps are the trained speculator's own chain
    assert torch.equal(model.propose_paths(hidden, last, [1] * 3, 1)[0], paths[:, :, :3])


def test_only_tied_speculators_run_past_n_predict(tmp_path) -> None:
    from specserve.spec.checkpoint import load_mlp_speculator, save_mlp_speculator

    with pytest.raises(ValueError, match="tie_weights"):
        MLPSpeculatorConfig(48, 200, 3, inner_dim=32, num_lookahead_tokens=4)
    tied = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, tie_weights=True, num_lookahead_tokens=5))
    save_mlp_speculator(tied, tmp_path / "tied")
    assert load_mlp_speculator(tmp_path / "tied").config.max_depth == 5
    assert load_mlp_speculator(tmp_path / "tied", num_lookahead_tokens=7).config.max_depth == 7
    untied = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, inner_dim=32))
    save_mlp_speculator(untied, tmp_path / "untied")
    assert load_mlp_speculator(tmp_path / "untied", num_lookahead_tokens=7).config.max_depth == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tie,head_vocab,scale_input", [(True, 64, True), (False, 0, False)])
def test_cpu_chain_kernel_matches_the_pytorch_chain(dtype, tie: bool, head_vocab: int, scale_input: bool) -> None:
    from specserve.kernels.build import load_library
    from specserve.model.fast_linear import enable_fast_linear

    kernels = load_library()
    if kernels is None or (dtype == torch.bfloat16 and kernels.gemm_packed_bf16 is None):
        pytest.skip("no CPU kernels here")
    depth = 5 if tie else 3  # a tied speculator runs two steps past n_predict
    model = MLPSpeculator(MLPSpeculatorConfig(48, 200, 3, inner_dim=0 if tie else 32, tie_weights=tie,
                                              scale_input=scale_input, head_vocab_size=head_vocab,
                                              num_lookahead_tokens=depth))
    model.reset_parameters(torch.Generator().manual_seed(7))
    with torch.no_grad():
        for norm in model.ln:  # non-trivial norm weights and biases, so that they are exercised
            norm.weight.add_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(8)) * 0.3)
            norm.bias.add_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(9)) * 0.3)
    if head_vocab:
        model.vocab_map = torch.randperm(200, generator=torch.Generator().manual_seed(4))[:head_vocab].sort().values
    model = model.to(dtype).eval()
    enable_fast_linear(model)
    hidden = torch.randn(32, 48, generator=torch.Generator().manual_seed(10)).to(dtype)
    last = torch.randint(0, 200, (32,), generator=torch.Generator().manual_seed(11))
    want, want_scores = model.propose_paths(hidden, last, [1] * depth, 1)
    assert model.attach_cpu_chain()
    for steps in (1, 3, depth):
        got, got_scores = model.propose_paths(hidden, last, [1] * steps, 1)
        assert got.shape == (32, 1, steps)
        same = (got == want[:, :, :steps]).all(-1).float().mean().item()
        # float32 differs only in summation order (near-ties could flip, none occur here); bfloat16
        # rounds where PyTorch rounds, so only rare one-ulp differences may change a token
        assert same == 1.0 if dtype == torch.float32 else same >= 0.9
    agree = (got == want).all(-1).squeeze(1)
    torch.testing.assert_close(got_scores[agree], want_scores[agree], rtol=0, atol=1e-4 if dtype == torch.float32 else 0.1)
    model.cpu_chain = None
    assert torch.equal(model.propose_paths(hidden, last, [1] * depth, 1)[0], want)


def test_speculator_runs_in_bfloat16_under_a_float32_base_on_cpu() -> None:
    from specserve.kernels.build import load_library
    from specserve.spec.head_proposer import speculator_dtype

    kernels = load_library()
    has_bf16 = kernels is not None and kernels.gemm_packed_bf16 is not None
    assert speculator_dtype(torch.float32, torch.device("cpu")) == (torch.bfloat16 if has_bf16 else torch.float32)
    assert speculator_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    assert speculator_dtype(torch.float32, torch.device("meta")) == torch.float32  # not a CPU: the base's
