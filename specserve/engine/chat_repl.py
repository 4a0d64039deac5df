"""`specserve chat`: a terminal chat that streams the reply token by token."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

from specserve.sampling_params import SamplingParams


def stream_reply(llm: Any, messages: list[dict[str, str]], params: SamplingParams,
                 out: Any = sys.stdout) -> tuple[str, int, float]:
    """Stream one assistant reply; returns (text, tokens, seconds)."""
    engine = llm.engine
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    request_id = f"chat-{next(_ids)}"
    engine.add_request(request_id, prompt, params)
    start = time.perf_counter()
    text, num_tokens = "", 0
    try:
        while True:
            outputs = [o for o in engine.step() if o.request_id == request_id]
            for output in outputs:
                completion = output.outputs[0]
                out.write(completion.delta_text)
                out.flush()
                text, num_tokens = completion.text, len(completion.token_ids)
                if output.finished:
                    return text, num_tokens, time.perf_counter() - start
    except KeyboardInterrupt:
        engine.abort_request(request_id)
        engine.step()
        return text, num_tokens, time.perf_counter() - start


_ids = itertools.count()


def run_chat(llm: Any, params: SamplingParams, system: str | None = None) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print("specserve chat: type a message, empty line or Ctrl-D to quit.", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if not line.strip():
            return
        messages.append({"role": "user", "content": line})
        text, num_tokens, seconds = stream_reply(llm, messages, params)
        rate = num_tokens / seconds if seconds > 0 else 0.0
        print(f"\n[{num_tokens} tokens, {rate:.1f} tok/s]", file=sys.stderr)
        messages.append({"role": "assistant", "content": text})
