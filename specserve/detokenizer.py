"""Incremental detokenization and stop-string matching for streaming output.

Why a window: decoding a token alone is wrong for most tokenizers (SentencePiece drops the
leading space of the first piece, byte-level BPE tokens may hold half a UTF-8 character), and
re-decoding the whole output every step is quadratic. So each step decodes two short windows of
token ids (prefix/read offsets, the technique vLLM uses):

    ids[prefix_offset:read_offset]  already emitted, decoded for context only -> prefix_text
    ids[prefix_offset:]             the same context plus the unread tokens   -> new_text

and emits ``new_text[len(prefix_text):]``. While ``new_text`` ends with U+FFFD the last character
is still incomplete, so nothing is emitted and the window grows until it completes. After an
emission the window slides: prefix_offset <- read_offset, read_offset <- len(ids).

Invariant: ``prefix_text`` ends on a character boundary of the full text (we only advance after
a decode that did), so the emitted deltas concatenate to the full decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens kept as left context for the first output tokens (spaces, merges across the seam).
NUM_PROMPT_CONTEXT_TOKENS = 5


class Tokenizer(Protocol):
    def decode(self, ids: list[int], /, skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    """Turns a stream of output token ids into text deltas. One per sequence."""

    def __init__(
        self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        context = list(prompt_token_ids[-NUM_PROMPT_CONTEXT_TOKENS:])
        # Token ids of the window source: a little prompt context, then every output token.
        self._ids: list[int] = context
        self._num_context = len(context)
        self.prefix_offset = 0
        self.read_offset = len(context)
        self._prefix_text: str | None = None  # decode of ids[prefix_offset:read_offset], cached
        self._chunks: list[str] = []  # emitted deltas, joined lazily by .text

    @property
    def output_token_ids(self) -> list[int]:
        return self._ids[self._num_context :]

    @property
    def text(self) -> str:
        """All output text emitted so far (excludes characters still being held back)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def push(self, new_token_ids: Sequence[int]) -> str:
        """Append tokens; return the newly completed text (possibly "")."""
        self._ids.extend(new_token_ids)
        if self.read_offset == len(self._ids):
            return ""
        prefix_text = self._prefix()
        new_text = self._decode(self._ids[self.prefix_offset :])
        if new_text.endswith(REPLACEMENT_CHAR):
            return ""  # a multi-byte character is split; wait for its remaining bytes
        return self._emit(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """At the end of a sequence: emit whatever is held back, replacement characters included."""
        if self.read_offset == len(self._ids):
            return ""
        new_text = self._decode(self._ids[self.prefix_offset :])
        return self._emit(new_text[len(self._prefix()) :])

    def _emit(self, delta: str) -> str:
        # Slide even when delta is "" (e.g. a skipped special token) so the window stays short.
        self.prefix_offset, self.read_offset = self.read_offset, len(self._ids)
        self._prefix_text = None
        if delta:
            self._chunks.append(delta)
        return delta

    def _prefix(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self.prefix_offset : self.read_offset])
        return self._prefix_text

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


def find_stop(
    text: str, num_new_chars: int, stops: Sequence[str], include_stop: bool = False
) -> tuple[int, str] | None:
    """Find a stop string that the last ``num_new_chars`` characters of ``text`` completed.

    Only matches ending inside the new characters count: earlier ones were checked on earlier
    deltas. So only the tail ``num_new_chars + len(stop) - 1`` is scanned per stop. Returns
    (cut index, stop) for the earliest match: the output is ``text[:cut]``; the cut is after the
    stop string when ``include_stop`` (params.include_stop_str_in_output), before it otherwise.
    """
    if num_new_chars <= 0 or not stops:
        return None
    new_start = len(text) - num_new_chars
    best: tuple[int, str] | None = None
    for stop in stops:
        idx = text.find(stop, max(0, new_start - len(stop) + 1))
        if idx != -1 and (best is None or idx < best[0]):
            best = (idx, stop)
    if best is None:
        return None
    idx, stop = best
    return (idx + len(stop) if include_stop else idx), stop


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still grow into a stop string.

    A streaming server holds these back: if the stop completes they must never have been sent.
    """
    longest = min(len(text), max((len(s) for s in stops), default=1) - 1)
    for k in range(longest, 0, -1):
        tail = text[-k:]
        if any(len(s) > k and s.startswith(tail) for s in stops):
            return k
    return 0
