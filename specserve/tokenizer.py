"""Tokenizer: an HF tokenizer folder read with `tokenizers` and jinja2 only (no transformers at runtime).

Behaviour follows transformers' TokenizersBackend so encodings and chat prompts match it:
- BOS/EOS: if tokenizer_config.json sets add_bos_token/add_eos_token (or tokenizer.json has no
  post-processor), the post-processor is rebuilt from those flags; otherwise tokenizer.json's own is used.
- Chat template: tokenizer_config.json "chat_template" (a string, or a list of named templates where
  "default" wins), else chat_template.jinja; rendered in a sandbox with trim_blocks/lstrip_blocks and
  the special tokens (bos_token, eos_token, ...) as variables, like transformers' apply_chat_template.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import processors

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization, applied when tokenizer_config.json asks for it
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    def __init__(self, tokenizer: HFTokenizer, config: dict[str, Any], chat_template: str | None) -> None:
        self._tok = tokenizer
        self.special_tokens: dict[str, str] = {
            name: text for name in _SPECIAL_NAMES if (text := _token_text(config.get(name))) is not None}
        self.bos_token_id = self._id_of(self.special_tokens.get("bos_token"))
        self.eos_token_id = self._id_of(self.special_tokens.get("eos_token"))
        self.pad_token_id = self._id_of(self.special_tokens.get("pad_token"))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        if "add_bos_token" in config or "add_eos_token" in config or tokenizer.post_processor is None:
            self._set_post_processor(bool(config.get("add_bos_token")), bool(config.get("add_eos_token")))
        self.chat_template = chat_template
        self._template = _compile_template(chat_template) if chat_template else None
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        named = {self._id_of(text) for text in self.special_tokens.values()}
        self.all_special_ids: list[int] = sorted(special | {i for i in named if i is not None})

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise ValueError(f"{path}: no tokenizer.json")
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        return cls(HFTokenizer.from_file(str(tok_file)), config, template)

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        bos, eos = self.special_tokens.get("bos_token"), self.special_tokens.get("eos_token")
        add_bos = add_bos and bos is not None and self.bos_token_id is not None
        add_eos = add_eos and eos is not None and self.eos_token_id is not None
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        special: list[tuple[str, int]] = []
        if add_bos:
            special.append((bos, self.bos_token_id))  # type: ignore[arg-type]
        if add_eos:
            special.append((eos, self.eos_token_id))  # type: ignore[arg-type]
        self._tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        text: str = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self._tok.id_to_token(i) for i in ids]

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """The prompt text for a conversation; extra kwargs become template variables."""
        if self._template is None:
            raise ValueError("this tokenizer has no chat template (tokenizer_config.json 'chat_template' "
                             "or chat_template.jinja); use a plain prompt instead")
        variables: dict[str, Any] = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **variables)
