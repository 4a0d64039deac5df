"""``specserve train-speculator``: phase 1 on plain text, phase 2 on the base model's own answers.

Pipeline (every stage caches its output under ``OUT/cache`` and is skipped when present, so a killed
run resumes where it stopped; ``--resume`` also restores the speculator and optimizer from
``OUT/checkpoint.pt``):

1. phase-2 answers: the base model (through the engine, greedy, in ``generate_dtype``: bfloat16 is about
   twice as fast here and its answers are the model's own text; labels are recomputed in float32)
   answers the training prompts;
2. hidden-state shards: phase-1 text chunks (base in ``phase1_dtype``) and phase-2 prompt+answer
   sequences (float32), with the base model's greedy token at every position (see losses.py);
3. head vocabulary: the ``head_vocab_size`` most frequent greedy tokens (phase-2 counts weigh 4x);
4. training: ``phase1_steps`` then ``phase2_steps``, one shard per step, AdamW, warmup + cosine per
   phase, bf16 autocast; the base embedding is frozen (it is borrowed, not stored), heads start random
   (``head_init="base"``: from the base LM head's rows, scaled; worse in our runs) and are trained;
5. export: ``OUT/ibm`` (IBM accelerator format, float32) and ``OUT/compact`` (bf16, embeddings borrowed).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from specserve.spec.medusa import MedusaConfig, MedusaHeads
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.train import data as train_data
from specserve.train.export import export_medusa, export_mlp, write_training_card
from specserve.train.generate import generate_responses, phase2_sequences
from specserve.train.hidden_states import HiddenStateExtractor, write_shards
from specserve.train.losses import head_index, speculator_loss, stage_batch, stage_weights


@dataclass(frozen=True)
class TrainConfig:
    out: str
    model: str | None = None
    arch: str = "mlp"  # mlp | medusa
    n_predict: int = 3
    inner_dim: int = 0  # 0 = the base model's hidden size (needed to borrow its embedding)
    head_vocab_size: int = 8192  # 0 = full vocabulary
    tie_weights: bool = True
    head_init: str = "random"  # random (IBM's init; better in our runs) | base: the base LM head's rows
    phase1_data: tuple[str, ...] = ()  # empty = the machine's offline docs (see data.py)
    phase1_max_chars: int = 1_500_000
    phase1_max_tokens: int = 0  # 0 = every chunk; else the first chunks only (a prefix: cached shards stay valid)
    phase1_dtype: str = "bfloat16"
    chunk_len: int = 256
    phase2_prompts: tuple[str, ...] = ()  # prompt files; empty = the shipped training split
    phase2_num_prompts: int = 0  # 0 = all
    max_new_tokens: int = 192
    generate_dtype: str = "bfloat16"  # answers only; their hidden states and labels come from float32
    phase2_samples: int = 0  # extra answers per prompt, sampled at sample_temperature (more distinct text)
    sample_temperature: float = 0.8
    generate_batch_size: int = 64  # requests the engine runs at once while answering
    generate_cuda_graphs: bool = False  # replay the answering engine's decode steps as CUDA graphs
    device: str = "cpu"  # every stage: answers, hidden states, training (the export is always on the CPU)
    phase1_steps: int = 120
    phase2_steps: int = 120
    seqs_per_step: int = 16  # one cached shard per step
    micro_batches: int = 4  # optimizer updates per step (a shard split by sequences): more updates, same compute
    lr: float = 3e-3
    phase2_lr_scale: float = 0.5
    warmup_steps: int = 10
    stage_decay: float = 0.8
    checkpoint_every: int = 20
    eval_every: int = 20
    seed: int = 0
    resume: bool = False
    only: str = "all"  # all | data | generate | phase1-data
    top_k_tokens_per_head: tuple[int, ...] = (4, 3, 2)
    n_candidates: int = 5
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "medusa"):
            raise ValueError(f"--arch must be mlp or medusa, got {self.arch!r}")
        if self.n_predict < 1 or self.seqs_per_step < 1 or self.chunk_len <= self.n_predict + 1:
            raise ValueError("n_predict, seqs_per_step must be >= 1 and chunk_len > n_predict + 1")
        if self.only not in ("all", "data", "generate", "phase1-data"):
            raise ValueError(f"--only must be all, data, generate or phase1-data, got {self.only!r}")
        if self.phase2_samples < 0 or (self.phase2_samples and self.sample_temperature <= 0):
            raise ValueError("--phase2-samples must be >= 0, with --sample-temperature > 0")


def prepare_phase1(cfg: TrainConfig, cache: Path) -> list[Path]:
    from specserve.engine.model_setup import load_bundle

    done = cache / "phase1" / "DONE"
    if done.exists():  # the shards are a prefix of one chunk list: keep those the token cap allows
        num_chunks = json.loads(done.read_text())["chunks"]
        if cfg.phase1_max_tokens:
            num_chunks = min(num_chunks, cfg.phase1_max_tokens // cfg.chunk_len)
        return sorted((cache / "phase1").glob("shard_*.pt"))[:-(-num_chunks // cfg.seqs_per_step)]
    bundle = load_bundle(cfg.model, cfg.phase1_dtype, cfg.device)
    docs = train_data.collect_documents([Path(p) for p in cfg.phase1_data] or None, cfg.phase1_max_chars, cfg.seed)
    tok = bundle.tokenizer
    chunks = train_data.pack_token_chunks([tok.encode(d) for d in docs], cfg.chunk_len, bundle.eos_token_ids[0])
    if cfg.phase1_max_tokens:
        chunks = chunks[:cfg.phase1_max_tokens // cfg.chunk_len]
    bar = tqdm(total=sum(len(c) for c in chunks), desc="phase-1 hidden states", unit="tok")
    paths = write_shards(HiddenStateExtractor(bundle.model), chunks, cache / "phase1", cfg.seqs_per_step, progress=bar)
    bar.close()
    done.write_text(json.dumps({"docs": len(docs), "chunks": len(chunks)}))
    return paths


def phase2_conversations(cfg: TrainConfig) -> list[list[list[dict[str, str]]]]:
    """The prompts of each file, shuffled with the seed file by file (so a file added later leaves the
    earlier files' order, and with it their cached answers and shards, as they were); at most
    ``phase2_num_prompts`` in all."""
    groups, left = [], cfg.phase2_num_prompts or None
    for path in cfg.phase2_prompts or (str(train_data.default_prompt_file("train")),):
        convs = train_data.load_prompts(path)
        random.Random(cfg.seed).shuffle(convs)
        groups.append(convs[:left])
        if left is not None:
            left -= len(groups[-1])
    return [g for g in groups if g]


def prepare_phase2(cfg: TrainConfig, cache: Path, bundle: Any) -> list[Path]:
    """Answers, then hidden-state shards. Each group of answers (a prompt file's, then the sampled
    rounds) is sorted by length and sharded on its own, numbered on from the group before: shards
    already on disk stay valid when prompts are added, and only the new ones are computed."""
    from specserve.engine.model_setup import load_bundle

    groups = phase2_conversations(cfg)
    convs = [conv for group in groups for conv in group]
    done = cache / "phase2" / "DONE"
    expected = len(convs) * (1 + cfg.phase2_samples)
    if done.exists() and json.loads(done.read_text()).get("answers") == expected:
        return sorted((cache / "phase2").glob("shard_*.pt"))
    bar = tqdm(total=expected, desc="phase-2 answers", unit="prompt")
    gen_bundle = bundle if cfg.generate_dtype == "float32" else load_bundle(cfg.model, cfg.generate_dtype, cfg.device)
    answer = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generate_batch_size, progress=bar,
                  cuda_graphs=cfg.generate_cuda_graphs, requests_per_write=max(256, 4 * cfg.generate_batch_size))
    rows = generate_responses(gen_bundle, convs, cache / "phase2_answers.jsonl", **answer)
    if cfg.phase2_samples:
        # Round after round over all prompts: the answers of a run with fewer samples are a prefix of these.
        repeated = convs * cfg.phase2_samples
        rows = rows + generate_responses(gen_bundle, repeated, cache / "phase2_samples.jsonl",
                                         temperature=cfg.sample_temperature, **answer)
    bar.close()
    if cfg.only == "generate":
        return []
    bounds = [0]
    for size in [len(g) for g in groups] + [len(convs)] * cfg.phase2_samples:
        bounds.append(bounds[-1] + size)
    extractor = HiddenStateExtractor(bundle.model)
    paths: list[Path] = []
    num_seqs = 0
    bar = tqdm(desc="phase-2 hidden states", unit="tok")
    for lo, hi in zip(bounds, bounds[1:]):
        seqs, masks = phase2_sequences(rows[lo:hi])
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths share a shard: less padding
        paths += write_shards(extractor, [seqs[i] for i in order], cache / "phase2", cfg.seqs_per_step,
                              [masks[i] for i in order], bar, first_index=len(paths))
        num_seqs += len(seqs)
    bar.close()
    done.write_text(json.dumps({"answers": len(rows), "sequences": num_seqs}))
    return paths


def split_phase2(shards2: list[Path]) -> tuple[list[Path], list[Path]]:
    """(held-out, training) phase-2 shards: every tenth shard is held out, for the eval curve."""
    val2 = shards2[::10]
    return val2, [s for s in shards2 if s not in val2] or shards2


def greedy_token_counts(shards1: list[Path], shards2: list[Path]) -> Counter[int]:
    """How often the base model's greedy token is each id, over trainable positions; phase-2 counts
    (the model's own answers, what it will be asked to predict) weigh 4x."""
    counts: Counter[int] = Counter()
    for weight, shards in ((1, shards1), (4, shards2)):
        for path in shards:
            shard = torch.load(path)
            for tok, num in Counter(shard["greedy_ids"][shard["loss_mask"]].tolist()).items():
                counts[tok] += weight * num
    return counts


def build_vocab_map(shards1: list[Path], shards2: list[Path], size: int, vocab_size: int) -> torch.Tensor | None:
    if not size or size >= vocab_size:
        return None
    counts = greedy_token_counts(shards1, shards2)
    top = [tok for tok, _ in counts.most_common(size)]
    top += [t for t in range(vocab_size) if t not in set(top)][:size - len(top)]  # pad if data is tiny
    return torch.tensor(sorted(top))


def build_speculator(cfg: TrainConfig, bundle: Any, vocab_map: torch.Tensor | None) -> torch.nn.Module:
    emb = bundle.model.get_input_embeddings().weight.detach().float()
    head = bundle.model.get_output_embeddings()
    head = (head if isinstance(head, torch.Tensor) else head.weight).detach().float()
    rows = head if vocab_map is None else head[vocab_map]
    hv = 0 if vocab_map is None else len(vocab_map)
    torch.manual_seed(cfg.seed)
    model: torch.nn.Module
    if cfg.arch == "medusa":
        model = MedusaHeads(MedusaConfig(emb.shape[1], emb.shape[0], cfg.n_predict, hv,
                                         cfg.top_k_tokens_per_head, cfg.n_candidates))
        with torch.no_grad():
            for h in model.heads:
                h.out.weight.copy_(rows)
    else:
        model = MLPSpeculator(MLPSpeculatorConfig(
            emb.shape[1], emb.shape[0], cfg.n_predict, cfg.inner_dim, cfg.tie_weights, scale_input=True,
            top_k_tokens_per_head=cfg.top_k_tokens_per_head, n_candidates=cfg.n_candidates, head_vocab_size=hv))
        model.reset_parameters(torch.Generator().manual_seed(cfg.seed))
        with torch.no_grad():
            for i in range(cfg.n_predict):
                if model.config.inner == emb.shape[1]:
                    if cfg.head_init == "base":
                        model.head[i].weight.copy_(rows)
                    model.emb[i].weight.copy_(emb)
                    model.emb[i].weight.requires_grad_(False)  # borrowed from the base model at load time
    if vocab_map is not None:
        model.vocab_map = vocab_map.clone()
    return model


@torch.no_grad()
def calibrate_head_scale(model: torch.nn.Module, batch: Any) -> float:
    """Scale the MLP speculator's heads so first logits have unit spread (returns the factor).

    The heads start as the base LM head's rows, which expect the base model's hidden states; the
    speculator's GELU states have another scale, and unscaled the first losses are ~24 nats.
    """
    if not isinstance(model, MLPSpeculator):
        return 1.0
    factor = 1.0 / float(model(batch.hidden[:2], batch.token_ids[:2]).float().std())
    for head in {id(h.weight): h for h in model.head}.values():
        head.weight.mul_(factor)
    return factor


def stage_means(results: list[Any], key: str) -> list[float]:
    """Per stage, the label-weighted mean of one per-stage field (``stage_acc`` ...) of LossResults."""
    total = sum(r.num_labels for r in results) or 1
    return [sum(getattr(r, key)[i] * r.num_labels for r in results) / total
            for i in range(len(getattr(results[0], key)))]


def merge_results(parts: list[Any]) -> Any:
    """Label-weighted mean of the micro-batches' LossResults."""
    from specserve.train.losses import LossResult

    total = sum(p.num_labels for p in parts) or 1
    loss = sum(p.loss.detach() * p.num_labels for p in parts) / total
    return LossResult(loss, stage_means(parts, "stage_losses"), stage_means(parts, "stage_acc"),
                      stage_means(parts, "chain_acc"), total)


def lr_at(step: int, num_steps: int, cfg: TrainConfig, base_lr: float) -> float:
    if step < cfg.warmup_steps:
        return base_lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, num_steps - cfg.warmup_steps)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def schedule(cfg: TrainConfig, shards1: list[Path], shards2_train: list[Path]) -> list[tuple[int, Path]]:
    """(phase, shard) for every step; a fixed function of the seed, so a resumed run sees the same order."""
    plan: list[tuple[int, Path]] = []
    for phase, shards, steps in ((1, shards1, cfg.phase1_steps), (2, shards2_train, cfg.phase2_steps)):
        epoch = 0
        while shards and sum(1 for p, _ in plan if p == phase) < steps:
            order = list(shards)
            random.Random(cfg.seed * 1000 + phase * 100 + epoch).shuffle(order)
            plan += [(phase, s) for s in order[:steps - sum(1 for p, _ in plan if p == phase)]]
            epoch += 1
    return plan


def load_batch(path: Path, cfg: TrainConfig, to_head: torch.Tensor) -> Any:
    """One cached shard as a StageBatch on the training device."""
    batch = stage_batch(torch.load(path), cfg.n_predict, to_head)
    return type(batch)(*(t.to(cfg.device, non_blocking=True) for t in batch))


@torch.no_grad()
def evaluate(model: torch.nn.Module, shards: list[Path], cfg: TrainConfig, to_head: torch.Tensor) -> dict[str, Any]:
    model.eval()
    weights = stage_weights(cfg.n_predict, cfg.stage_decay)
    results = []
    for path in shards:
        batch = load_batch(path, cfg, to_head)
        with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16):
            logits = model(batch.hidden, batch.token_ids)
        results.append(speculator_loss(logits, batch.labels, weights))
    model.train()
    return {"stage_loss": stage_means(results, "stage_losses"), "stage_acc": stage_means(results, "stage_acc"),
            "chain_acc": stage_means(results, "chain_acc")}


def train(cfg: TrainConfig) -> Path:
    """Run the whole pipeline (or the data stage named by ``cfg.only``); returns the output folder."""
    from specserve.engine.model_setup import load_bundle

    out = Path(cfg.out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.only == "phase1-data":
        prepare_phase1(cfg, cache)
        return out
    bundle = load_bundle(cfg.model, "float32", cfg.device)
    shards2 = prepare_phase2(cfg, cache, bundle)
    if cfg.only == "generate":
        return out
    shards1 = prepare_phase1(cfg, cache) if cfg.phase1_steps > 0 else []
    if cfg.only == "data":
        return out
    val2, train2 = split_phase2(shards2)
    vocab_path = out / f"vocab_map_{cfg.head_vocab_size}.pt"
    if vocab_path.exists():
        vocab_map = torch.load(vocab_path)
    else:
        vocab_map = build_vocab_map(shards1, train2, cfg.head_vocab_size, bundle.arch.vocab_size)
        torch.save(vocab_map, vocab_path)
    model = build_speculator(cfg, bundle, vocab_map).to(cfg.device)
    to_head = head_index(vocab_map, bundle.arch.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    plan = schedule(cfg, shards1, train2)
    head_scale = calibrate_head_scale(model, load_batch(plan[0][1], cfg, to_head))
    start, ckpt = 0, out / "checkpoint.pt"
    log_path = out / "log.jsonl"
    if cfg.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=cfg.device)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        start = state["step"]
        kept = [line for line in log_path.read_text().splitlines() if json.loads(line).get("step", 0) <= start]
        log_path.write_text("".join(line + "\n" for line in kept))
    elif log_path.exists():
        log_path.unlink()
    weights = stage_weights(cfg.n_predict, cfg.stage_decay)
    model.train()
    bar = tqdm(total=len(plan), initial=start, desc=f"train {cfg.arch}", unit="step")
    with open(log_path, "a") as log:
        for step in range(start, len(plan)):
            phase, path = plan[step]
            first = 0 if phase == 1 else cfg.phase1_steps
            num = cfg.phase1_steps if phase == 1 else len(plan) - cfg.phase1_steps
            base_lr = cfg.lr * (1.0 if phase == 1 else cfg.phase2_lr_scale)
            for group in optim.param_groups:
                group["lr"] = lr_at(step - first, num, cfg, base_lr)
            t0 = time.perf_counter()
            batch = load_batch(path, cfg, to_head)
            parts = []
            for rows in torch.arange(batch.hidden.shape[0], device=cfg.device).chunk(cfg.micro_batches):
                with torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16):
                    logits = model(batch.hidden[rows], batch.token_ids[rows])
                part = speculator_loss(logits, batch.labels[:, rows], weights)
                optim.zero_grad(set_to_none=True)
                part.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optim.step()
                parts.append(part)
            result = merge_results(parts)
            tok_s = result.num_labels / (time.perf_counter() - t0)
            entry: dict[str, Any] = {"step": step + 1, "head_scale": head_scale, "phase": phase, "loss": float(result.loss.detach()),
                                     "stage_loss": result.stage_losses, "stage_acc": result.stage_acc,
                                     "chain_acc": result.chain_acc, "tok_s": tok_s, "time": time.time()}
            if val2 and ((step + 1) % cfg.eval_every == 0 or step + 1 == len(plan)):
                entry["val"] = evaluate(model, val2, cfg, to_head)
            log.write(json.dumps(entry) + "\n")
            log.flush()
            bar.set_postfix_str(f"p{phase} " + " ".join(f"{x:.2f}" for x in result.stage_losses)
                                + f" acc {result.stage_acc[0]:.2f} {tok_s:.0f} tok/s")
            bar.update(1)
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == len(plan):
                torch.save({"model": model.state_dict(), "optim": optim.state_dict(), "step": step + 1},
                           ckpt.with_suffix(".tmp"))
                ckpt.with_suffix(".tmp").rename(ckpt)
    bar.close()
    export(model.cpu(), cfg, out)
    return out


def export(model: torch.nn.Module, cfg: TrainConfig, out: Path) -> None:
    card = {"config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, "stage_weights":
            stage_weights(cfg.n_predict, cfg.stage_decay)}
    model.eval()
    if isinstance(model, MedusaHeads):
        export_medusa(model, out / "medusa", torch.bfloat16)
        write_training_card(out / "medusa", card)
        return
    assert isinstance(model, MLPSpeculator)
    export_mlp(model, out / "ibm", "ibm", torch.float32)
    borrowed = model.config.inner == model.config.emb_dim
    export_mlp(model, out / "compact", "compact-emb" if borrowed else "ibm", torch.bfloat16)
    write_training_card(out / "compact", card)
