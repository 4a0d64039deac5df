"""Shared by the scripts that probe the adaptive policy (policy_levels.py, spec_overhead_profile.py):
their command line, and one `auto` engine over the throughput benchmark's distinct chat prompts."""

from __future__ import annotations

import argparse

import torch

from specserve.bench.common import chat_prompt_ids
from specserve.engine.engine import LLMEngine
from specserve.engine.llm import build_engine_config
from specserve.engine.model_setup import load_bundle


def parse_args(description: str, dtype: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dtype", default=dtype)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--speculator", default="default+ngram")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def auto_engine(args: argparse.Namespace, max_num_seqs: int) -> tuple[LLMEngine, list[list[int]]]:
    """An engine with ``args.speculator`` and speculation auto, and ``args.requests`` prompts."""
    bundle = load_bundle(None, args.dtype, "cpu")
    prompts = [chat_prompt_ids(bundle.tokenizer, i, distinct=True) for i in range(args.requests)]
    engine = LLMEngine(build_engine_config(dtype=args.dtype, max_num_seqs=max_num_seqs,
                                           speculator=args.speculator, speculation="auto"), bundle)
    return engine, prompts
