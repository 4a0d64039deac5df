"""The draft-model speculator: its chains are the draft model's own greedy continuation (checked
against transformers on the same weights), its cache follows accepted and rejected drafts, it is
lossless in the engine, and it gives every draft block back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from specserve import LLM, SamplingParams
from specserve.spec.draft_model import DraftModelProposer
from specserve.spec.proposer import ProposalRequest

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "Customer: my parcel is late. Agent:",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Hello",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hf_model(tiny_llama_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def noisy_draft_dir(tmp_path_factory: pytest.TempPathFactory, hf_model, tiny_llama_dir: Path) -> Path:
    """The tiny Llama with noise on its last layer: a draft that is right only part of the time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers.1." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * 0.3)
    out = tmp_path_factory.mktemp("noisy-draft")
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(tiny_llama_dir / "tokenizer.json", out / "tokenizer.json")
    return out


def hf_greedy(hf_model, token_ids: list[int], num: int) -> list[int]:
    ids = list(token_ids)
    with torch.no_grad():
        for _ in range(num):
            logits = hf_model(torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(token_ids):]


def request(rid: str, token_ids: list[int], max_depth: int = 4) -> ProposalRequest:
    return ProposalRequest(rid, list(token_ids), num_prompt_tokens=len(token_ids), max_depth=max_depth,
                           num_candidates=3)


class CountingProposer(DraftModelProposer):
    """Counts the tokens fed to the draft model (to see that accepted drafts' K/V is reused)."""

    num_fed = 0

    def _forward(self, runs):
        self.num_fed += sum(len(run.token_ids) for run in runs)
        return super()._forward(runs)


def check_cache(proposer: DraftModelProposer, histories: dict[str, list[int]], depths: dict[str, int]) -> None:
    for rid, history in histories.items():
        cached = proposer.cached_token_ids[rid]
        assert len(cached) == len(history) + depths[rid] - 1
        assert cached[:len(history)] == history
        assert len(proposer.kv.get_block_ids(rid)) == -(-len(cached) // proposer.block_size)
    proposer.kv.check_integrity()


def test_chains_follow_accepted_and_rejected_drafts(tiny_bundle, hf_model) -> None:
    tok = tiny_bundle.tokenizer
    proposer = CountingProposer(tiny_bundle, num_blocks=64, block_size=4)
    a, b, c = (tok.encode(p) for p in PROMPTS[:3])
    # Step 1: two prompts prefilled in one batch.
    trees = proposer.propose([request("a", a), request("b", b, max_depth=2)], None)
    assert [t.token_ids for t in trees] == [hf_greedy(hf_model, a, 4), hf_greedy(hf_model, b, 2)]
    assert trees[0].parents == [-1, 0, 1, 2]
    check_cache(proposer, {"a": a, "b": b}, {"a": 4, "b": 2})
    fed = proposer.num_fed
    assert fed == len(a) + 3 + len(b) + 1

    # Step 2: "a" accepted all four drafts plus a bonus token; "b" accepted one and got another token
    # instead of the second; "c" joins (its whole prompt in the same batch as the catch-ups).
    a = a + trees[0].token_ids + [17]
    b = b + trees[1].token_ids[:1] + [trees[1].token_ids[1] + 1]
    trees = proposer.propose([request("a", a, 3), request("b", b), request("c", c, 1)], None)
    assert [t.token_ids for t in trees] == [hf_greedy(hf_model, a, 3), hf_greedy(hf_model, b, 4),
                                            hf_greedy(hf_model, c, 1)]
    check_cache(proposer, {"a": a, "b": b, "c": c}, {"a": 3, "b": 4, "c": 1})
    # "a" feeds its last draft and the bonus token, "b" only the token that replaced its rejected draft.
    assert proposer.num_fed - fed == (2 + 2) + (1 + 3) + len(c)

    # Step 3: everything rejected for "a" (a different first token), and a plain decode for "c".
    a = a + [trees[0].token_ids[0] + 1]
    c = c + [99]
    trees = proposer.propose([request("c", c), request("a", a)], None)
    assert [t.token_ids for t in trees] == [hf_greedy(hf_model, c, 4), hf_greedy(hf_model, a, 4)]
    check_cache(proposer, {"a": a, "c": c}, {"a": 4, "c": 4})

    for rid in ("a", "b", "c"):
        proposer.release(rid)
    assert proposer.kv.num_used_blocks == 0 and proposer.num_cached_requests == 0


def test_out_of_blocks_proposes_nothing_and_frees(tiny_bundle, hf_model) -> None:
    proposer = DraftModelProposer(tiny_bundle, num_blocks=3, block_size=4)
    short, long = [5, 6, 7], list(range(100, 120))
    trees = proposer.propose([request("short", short), request("long", long)], None)
    assert trees[0].token_ids == hf_greedy(hf_model, short, 4)
    assert len(trees[1]) == 0
    assert proposer.kv.get_block_ids("long") == [] and "long" not in proposer.cached_token_ids
    proposer.release("short")
    assert proposer.kv.num_used_blocks == 0


def test_context_limit_and_bad_token_ids(tiny_bundle) -> None:
    proposer = DraftModelProposer(tiny_bundle, num_blocks=300, block_size=16)
    limit = proposer.max_model_len
    trees = proposer.propose([request("edge", [3] * (limit - 1), 4), request("full", [3] * limit, 4)], None)
    assert [len(t) for t in trees] == [2, 1]  # the highest fed position is limit - 1
    trees = proposer.propose([request("over", [3] * (limit + 1), 4)], None)
    assert len(trees[0]) == 0 and "over" not in proposer.cached_token_ids
    with pytest.raises(ValueError, match="outside the draft model's vocabulary"):
        proposer.propose([request("x", [1, 2]), request("bad", [1, proposer.vocab_size])], None)
    assert "x" not in proposer.cached_token_ids  # checked before any state changed
    for rid in ("edge", "full"):
        proposer.release(rid)
    assert proposer.kv.num_used_blocks == 0


def greedy(llm: LLM, prompts: list[str]) -> list[list[int]]:
    # 21 tokens = 1 from the prefill + 4 steps of 4 accepted drafts and a bonus token.
    params = SamplingParams(temperature=0, max_tokens=21, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def reference(tiny_bundle) -> list[list[int]]:
    return greedy(LLM(bundle=tiny_bundle), PROMPTS)


def test_lossless_in_engine_and_blocks_come_back(tiny_bundle, reference, noisy_draft_dir) -> None:
    llm = LLM(bundle=tiny_bundle, speculator=f"draft:{noisy_draft_dir}", speculation="on")
    proposer = llm.engine.runner.spec.proposer
    assert isinstance(proposer, DraftModelProposer)
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    assert stats["spec_steps"] > 0
    # Partly right, so full, partial and no acceptance all happen (each cuts the draft cache differently).
    histogram = stats["spec_accepted_length_histogram"]
    assert histogram.get(0) and histogram.get(4) and set(histogram) & {1, 2, 3}
    assert proposer.kv.num_used_blocks == 0 and proposer.num_cached_requests == 0
    # One at a time and again batched: same outputs, nothing held between calls.
    assert [greedy(llm, [p])[0] for p in PROMPTS[:2]] == reference[:2]
    assert greedy(llm, PROMPTS[::-1]) == reference[::-1]
    assert proposer.kv.num_used_blocks == 0 and proposer.num_cached_requests == 0
    proposer.kv.check_integrity()


def test_draft_equal_to_base_is_accepted_in_full(tiny_bundle, reference, tiny_llama_dir) -> None:
    llm = LLM(bundle=tiny_bundle, speculator=f"draft:{tiny_llama_dir}", speculation="on")
    assert greedy(llm, PROMPTS) == reference
    stats = llm.stats()
    assert stats["spec_accepted_tokens"] >= 0.95 * stats["spec_proposed_tokens"]
    assert stats["mean_accepted_tokens_per_step"] >= 4.8
    assert llm.engine.runner.spec.proposer.kv.num_used_blocks == 0


@pytest.mark.parametrize("engine_args", [dict(num_kv_blocks=12, max_num_seqs=4, block_size=4),
                                         dict(max_num_batched_tokens=6)], ids=["preemption", "chunked"])
def test_lossless_under_preemption_and_chunking(tiny_bundle, reference, noisy_draft_dir, engine_args) -> None:
    llm = LLM(bundle=tiny_bundle, speculator=f"draft:{noisy_draft_dir}", speculation="on", **engine_args)
    assert greedy(llm, PROMPTS) == reference
    assert llm.stats()["spec_accepted_tokens"] > 0
    if "num_kv_blocks" in engine_args:
        assert llm.stats()["num_preemptions"] > 0
    assert llm.engine.runner.spec.proposer.kv.num_used_blocks == 0


def test_abort_frees_draft_blocks(tiny_bundle, noisy_draft_dir) -> None:
    llm = LLM(bundle=tiny_bundle, speculator=f"draft:{noisy_draft_dir}", speculation="on")
    engine, proposer = llm.engine, llm.engine.runner.spec.proposer
    engine.add_request("x", PROMPTS[0], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert proposer.kv.num_used_blocks > 0
    engine.abort_request("x")
    assert proposer.kv.num_used_blocks == 0 and proposer.num_cached_requests == 0
    engine.step()
