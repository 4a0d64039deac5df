"""Greedy output of the engine against transformers' generate on the same weights (default model).

Alone, batched with staggered arrivals, with preemption (tiny KV pool), chunked prefill (tiny token
budget) and prefix-cache hits: every configuration must give exactly transformers' tokens.
"""

from __future__ import annotations

import pytest
import torch

from specserve import LLM, SamplingParams

CHATS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a hash table is in two sentences.",
    "My order arrived damaged. What should I do?",
    "List three tips for better sleep.",
    "Translate 'good morning' into Spanish and German.",
    "What is 17 times 23?",
]
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def prompts(default_bundle) -> list[list[int]]:
    tok = default_bundle.tokenizer
    return [tok.encode(tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True))
            for c in CHATS]


@pytest.fixture(scope="module")
def reference(default_bundle, prompts) -> list[list[int]]:
    """transformers' greedy tokens, one prompt at a time (no padding effects)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(default_bundle.model_dir, dtype=torch.float32).eval()
    eos = default_bundle.eos_token_ids
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            gen = hf.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos[0])
            outs.append(gen[0, len(ids):].tolist())
    return outs


def run(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outs]


def with_eos_trimmed(tokens: list[int], eos: list[int]) -> list[int]:
    return tokens  # both sides include the EOS token that ended generation


def test_alone_matches_transformers(default_bundle, prompts, reference) -> None:
    llm = LLM(bundle=default_bundle)
    for ids, expected in zip(prompts, reference):
        assert run(llm, [ids])[0] == expected


def test_sixteen_staggered_match_transformers(default_bundle, prompts, reference) -> None:
    llm = LLM(bundle=default_bundle, max_num_seqs=16)
    engine = llm.engine
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    order = list(range(len(prompts))) * 2  # 16 requests
    results: dict[str, list[int]] = {}
    submitted = 0
    step = 0
    while submitted < len(order) or engine.has_unfinished_requests():
        if submitted < len(order) and step % 3 == 0:  # a new arrival every third step
            engine.add_request(f"r{submitted}", {"prompt_token_ids": prompts[order[submitted]]}, params)
            submitted += 1
        for out in engine.step():
            if out.finished:
                results[out.request_id] = list(out.outputs[0].token_ids)
        step += 1
    for i, p in enumerate(order):
        assert results[f"r{i}"] == reference[p], f"request r{i} (prompt {p}) differs"


@pytest.mark.parametrize("engine_args", [
    dict(num_kv_blocks=24, max_num_seqs=8),  # forces preemption
    dict(max_num_batched_tokens=7),  # chunked prefill, a few tokens per step
], ids=["preemption", "chunked-prefill"])
def test_scheduling_changes_nothing(default_bundle, prompts, reference, engine_args) -> None:
    llm = LLM(bundle=default_bundle, **engine_args)
    assert run(llm, prompts) == reference
    if "num_kv_blocks" in engine_args:
        assert llm.stats()["num_preemptions"] > 0


def test_prefix_hits_change_nothing(default_bundle, prompts, reference) -> None:
    llm = LLM(bundle=default_bundle)
    assert run(llm, prompts[:2]) == reference[:2]
    assert run(llm, prompts[:2]) == reference[:2]  # the second time the prompts hit the cache
    assert llm.stats()["prefix_cache_hit_tokens"] >= 32
