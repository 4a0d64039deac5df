"""The offline API, in the shape vLLM users know: LLM(...).generate / .chat / .stats."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from specserve.config import CacheConfig, EngineConfig, SchedulerConfig, SpecConfig, parse_memory
from specserve.engine.engine import LLMEngine, PromptInput
from specserve.engine.model_setup import ModelBundle
from specserve.outputs import RequestOutput
from specserve.sampling_params import SamplingParams

Message = dict[str, str]


def build_engine_config(model: str | None = None, dtype: str = "float32", device: str = "cpu",
                        block_size: int = 16, kv_cache_memory: str | int = "1GiB",
                        num_kv_blocks: int | None = None, enable_prefix_caching: bool = True,
                        max_num_batched_tokens: int = 1024, max_num_seqs: int = 64,
                        max_model_len: int | None = None, seed: int = 0, speculator: str | None = None,
                        speculation: str = "auto", num_speculative_tokens: int | None = None,
                        num_candidates: int | None = None, tensor_parallel_size: int = 1,
                        cuda_graphs: bool = False, chain_siblings: int | None = None) -> EngineConfig:
    return EngineConfig(
        model=model, dtype=dtype, device=device, seed=seed, tensor_parallel_size=tensor_parallel_size,
        cuda_graphs=cuda_graphs,
        cache=CacheConfig(block_size=block_size, kv_cache_memory=parse_memory(kv_cache_memory),
                          num_blocks=num_kv_blocks, enable_prefix_caching=enable_prefix_caching),
        scheduler=SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens,
                                  max_num_seqs=max_num_seqs, max_model_len=max_model_len),
        spec=SpecConfig(speculator=speculator, speculation=speculation,
                        num_speculative_tokens=num_speculative_tokens, num_candidates=num_candidates,
                        chain_siblings=chain_siblings),
    )


class LLM:
    def __init__(self, model: str | None = None, dtype: str = "float32", bundle: ModelBundle | None = None,
                 **engine_args: Any) -> None:
        """``bundle``: already loaded weights to share (see engine.model_setup.load_bundle)."""
        self.engine = LLMEngine(build_engine_config(model=model, dtype=dtype, **engine_args), bundle)
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: PromptInput | Sequence[PromptInput],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        prompt_list = list(prompts)  # type: ignore[arg-type]
        if params is None or isinstance(params, SamplingParams):
            param_list = [params or SamplingParams()] * len(prompt_list)
        else:
            param_list = list(params)
            if len(param_list) != len(prompt_list):
                raise ValueError("need one SamplingParams per prompt, or a single one for all")
        order: dict[str, int] = {}
        try:
            for index, (prompt, sp) in enumerate(zip(prompt_list, param_list)):
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, sp)
                order[request_id] = index
        except ValueError:
            for request_id in order:
                self.engine.abort_request(request_id)
            self.engine.step()  # flush the abort outputs
            raise
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(order):
            for output in self.engine.step():
                if output.finished and output.request_id in order:
                    finished[output.request_id] = output
        return [finished[rid] for rid in sorted(order, key=order.__getitem__)]

    def chat(self, conversations: list[Message] | list[list[Message]],
             params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        prompts: list[PromptInput] = [
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # type: ignore[arg-type]
            for messages in conversations
        ]
        return self.generate(prompts, params)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()
