"""Command line: specserve generate | chat | serve (bench and training join as they land).

Every user error ends in one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None,
                       help="HF folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    group.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    group.add_argument("--device", default="cpu")
    group.add_argument("--kv-cache-memory", default="1GiB", help="KV cache budget, e.g. 2GiB")
    group.add_argument("--block-size", type=int, default=16)
    group.add_argument("--max-num-seqs", type=int, default=64)
    group.add_argument("--max-num-batched-tokens", type=int, default=1024)
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--no-prefix-caching", action="store_true")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    group.add_argument("--cuda-graphs", action="store_true",
                       help="replay plain decode steps as CUDA graphs (--device cuda, needs Triton)")
    group.add_argument("--tensor-parallel-size", type=int, default=1,
                       help="shard the model over N processes (GPUs: NCCL, CPU: gloo); under torchrun, "
                            "its number of processes (default 1)")
    spec = parser.add_argument_group("speculation")
    spec.add_argument("--speculator", default=None,
                      help="default | ngram | PATH | mlp:PATH | medusa:PATH | draft:PATH, each may end in +ngram "
                           "(prompt lookup where the text repeats; default: none)")
    spec.add_argument("--speculation", default="auto", choices=["auto", "on", "off"],
                      help="auto: per step, from measured cost and acceptance (default)")
    spec.add_argument("--num-speculative-tokens", type=int, default=None, help="max draft depth")
    spec.add_argument("--num-candidates", type=int, default=None, help="max candidate paths per request")
    spec.add_argument("--chain-siblings", type=int, default=None,
                      help="nodes beside each single chain: an MLP speculator's beam when above 0, Medusa's "
                           "second-best tokens at that many positions (default: 1 on a CPU, 0 elsewhere)")


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        model=args.model, dtype=args.dtype, device=args.device, kv_cache_memory=args.kv_cache_memory,
        block_size=args.block_size, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching, speculator=args.speculator,
        speculation=args.speculation, num_speculative_tokens=args.num_speculative_tokens,
        num_candidates=args.num_candidates, chain_siblings=args.chain_siblings,
        tensor_parallel_size=args.tensor_parallel_size,
        cuda_graphs=args.cuda_graphs,
    )


def run_torchrun_worker(args: argparse.Namespace) -> int | None:
    """Under torchrun every process runs the same command: ranks > 0 serve their shard and never reach
    the engine; None for rank 0 (and without torchrun), which goes on as usual."""
    from specserve.distributed.parallel_state import torchrun_env

    env = torchrun_env()
    if getattr(args, "tensor_parallel_size", 1) <= 1 or env is None or env[0] == 0:
        return None
    import torch

    from specserve.distributed.launcher import rank_spec
    from specserve.distributed.worker import run_torchrun_worker as run_worker
    from specserve.engine.llm import build_engine_config
    from specserve.model.loader import resolve_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    config = build_engine_config(**engine_kwargs(args))
    if config.tensor_parallel_size != env[1]:
        raise ValueError(f"--tensor-parallel-size is {config.tensor_parallel_size} but the launcher started "
                         f"{env[1]} processes")
    return run_worker(rank_spec(config, resolve_model_dir(config.model)))


def make_llm(args: argparse.Namespace) -> Any:
    import torch

    from specserve.engine.llm import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    return LLM(**engine_kwargs(args))


def sampling_from_args(args: argparse.Namespace) -> Any:
    from specserve.sampling_params import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          max_tokens=args.max_tokens, seed=args.seed)


def add_sampling_args(parser: argparse.ArgumentParser, default_temperature: float) -> None:
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=default_temperature)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)


def cmd_generate(args: argparse.Namespace) -> int:
    params = sampling_from_args(args)
    llm = make_llm(args)
    if args.chat:
        output = llm.chat([{"role": "user", "content": args.prompt}], params)[0]
    else:
        output = llm.generate([args.prompt], params)[0]
    completion = output.outputs[0]
    if args.json:
        print(json.dumps({"text": completion.text, "token_ids": completion.token_ids,
                          "finish_reason": completion.finish_reason,
                          "prompt_tokens": len(output.prompt_token_ids), "metrics": output.metrics}))
    else:
        print(completion.text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from specserve.engine.chat_repl import run_chat

    llm = make_llm(args)
    run_chat(llm, sampling_from_args(args), system=args.system)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from specserve.engine.engine import set_threads
    from specserve.server.serve import run_server

    set_threads(args.threads)
    engine_args = engine_kwargs(args)
    return run_server(engine_args, host=args.host, port=args.port, api_key=args.api_key,
                      max_queue=args.max_queue,
                      served_model_name=args.served_model_name, drain_timeout=args.drain_timeout)


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("SPECSERVE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 routes (default: $SPECSERVE_API_KEY)")
    parser.add_argument("--max-queue", type=int, default=256,
                        help="waiting requests beyond which new ones get 429 (default 256)")
    parser.add_argument("--served-model-name", default=None, help="the id clients send as 'model'")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds running requests may take to finish after SIGTERM")


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    result = args.bench_module.run(args)
    result.print_table()
    result.write_json(args.json)
    return 0


def cmd_train_speculator(args: argparse.Namespace) -> int:
    import torch

    from specserve.train.trainer import TrainConfig, train

    torch.set_num_threads(args.threads or 1)
    config = TrainConfig(
        out=args.out, model=args.model, arch=args.arch, n_predict=args.n_predict, inner_dim=args.inner_dim,
        head_vocab_size=args.head_vocab, tie_weights=not args.no_tie, head_init=args.head_init, phase1_data=tuple(args.phase1_data or ()),
        phase1_max_chars=args.phase1_max_chars, phase1_max_tokens=args.phase1_max_tokens,
        generate_dtype=args.generate_dtype, phase2_prompts=tuple(args.phase2_prompts or ()),
        phase2_num_prompts=args.phase2_num_prompts, max_new_tokens=args.max_new_tokens,
        phase1_steps=args.phase1_steps, phase2_steps=args.phase2_steps, seqs_per_step=args.seqs_per_step,
        micro_batches=args.micro_batches, lr=args.lr, seed=args.seed, resume=args.resume, only=args.only,
        phase2_samples=args.phase2_samples, sample_temperature=args.sample_temperature,
        generate_batch_size=args.generate_batch_size, generate_cuda_graphs=args.generate_cuda_graphs,
        device=args.device, eval_every=args.eval_every)
    out = train(config)
    print(f"speculator written to {out}")
    return 0


def cmd_eval_speculator(args: argparse.Namespace) -> int:
    from specserve.train.eval import evaluate_speculator, print_report

    report = evaluate_speculator(args)
    print(json.dumps(report, indent=2) if args.json else print_report(report))
    return 0


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train-speculator", help="train an MLP speculator or Medusa heads for a model")
    train.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    train.add_argument("--out", required=True, help="output folder (checkpoints, cache, exported speculator)")
    train.add_argument("--arch", default="mlp", choices=["mlp", "medusa"])
    train.add_argument("--n-predict", type=int, default=3)
    train.add_argument("--inner-dim", type=int, default=0, help="0 = the base hidden size (embedding borrowed)")
    train.add_argument("--head-vocab", type=int, default=8192, help="heads over the N most frequent tokens; 0 = all")
    train.add_argument("--head-init", default="random", choices=["base", "random"],
                       help="MLP heads start random (IBM's init, default) or as the base LM head's rows")
    train.add_argument("--no-tie", action="store_true", help="separate head/embedding/norm per stage")
    train.add_argument("--phase1-data", nargs="*", help="text files, folders or .jsonl {\"text\"} (default: offline docs)")
    train.add_argument("--phase1-max-chars", type=int, default=1_500_000, help="text read for phase 1")
    train.add_argument("--phase1-max-tokens", type=int, default=0, help="phase-1 tokens used (0 = all read)")
    train.add_argument("--generate-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                       help="dtype of the engine writing phase-2 answers (labels are float32 either way)")
    train.add_argument("--phase2-prompts", nargs="+", default=None,
                       help=".jsonl files of {\"prompt\"} (default: shipped train split); a file added later "
                            "keeps the earlier files' cached answers and shards")
    train.add_argument("--phase2-num-prompts", type=int, default=0, help="0 = every prompt")
    train.add_argument("--phase2-samples", type=int, default=0,
                       help="extra answers per prompt, sampled (labels stay the model's greedy tokens)")
    train.add_argument("--sample-temperature", type=float, default=0.8, help="temperature of those answers")
    train.add_argument("--generate-batch-size", type=int, default=64, help="requests answered at once")
    train.add_argument("--generate-cuda-graphs", action="store_true",
                       help="replay the answering engine's decode steps as CUDA graphs (CUDA only)")
    train.add_argument("--device", default="cpu", help="cpu or cuda: answers, hidden states and training")
    train.add_argument("--max-new-tokens", type=int, default=192)
    train.add_argument("--phase1-steps", type=int, default=120)
    train.add_argument("--phase2-steps", type=int, default=120)
    train.add_argument("--seqs-per-step", type=int, default=16)
    train.add_argument("--micro-batches", type=int, default=4, help="optimizer updates per step")
    train.add_argument("--lr", type=float, default=3e-3)
    train.add_argument("--eval-every", type=int, default=20, help="steps between held-out evaluations")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--only", default="all", choices=["all", "data", "generate", "phase1-data"],
                       help="stop after a data stage (to run stages in separate processes)")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    train.set_defaults(func=cmd_train_speculator)

    ev = sub.add_parser("eval-speculator", help="acceptance and speed of a speculator on held-out prompts")
    ev.add_argument("--prompts", default=None, help=".jsonl of {\"prompt\"} (default: shipped held-out split)")
    ev.add_argument("--num-prompts", type=int, default=0, help="0 = every prompt")
    ev.add_argument("--max-tokens", type=int, default=128)
    ev.add_argument("--batch-size", type=int, default=1, help="requests at once (1 = single-request decode)")
    ev.add_argument("--json", action="store_true")
    add_engine_args(ev)
    ev.set_defaults(func=cmd_eval_speculator)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a completion for one prompt")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    gen.add_argument("--json", action="store_true", help="print a JSON object")
    add_sampling_args(gen, default_temperature=0.0)
    add_engine_args(gen)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat in the terminal, streaming")
    chat.add_argument("--system", default=None, help="system prompt")
    add_sampling_args(chat, default_temperature=0.0)
    add_engine_args(chat)
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server with a chat page at /")
    add_serve_args(serve)
    add_engine_args(serve)
    serve.set_defaults(func=cmd_serve)
    add_train_parsers(sub)
    from specserve.bench.cli_args import add_bench_parsers

    add_bench_parsers(sub, cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        worker_status = run_torchrun_worker(args)
        if worker_status is not None:
            return worker_status
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, no traceback, for every user-facing failure
        if os.environ.get("SPECSERVE_DEBUG"):
            raise
        name = type(exc).__name__
        message = str(exc).splitlines()[0] if str(exc) else name
        print(f"specserve: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
