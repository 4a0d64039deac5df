"""The training pipeline end to end on a tiny random Llama (SmolLM2's tokenizer): data, loss, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specserve.spec.checkpoint import load_mlp_speculator
from specserve.spec.medusa import load_medusa
from specserve.train.generate import generate_responses, phase2_sequences
from specserve.train.hidden_states import HiddenStateExtractor
from specserve.train.trainer import TrainConfig, train

PROMPTS = ["What is gravity?", "Write a haiku about tea.", "Explain recursion.", "My laptop broke, help."]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("text")
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "speculators", "guess", "tokens", "ahead"]
    for i in range(6):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(400)))
    return d


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS * 2))
    return path


def tiny_config(out: Path, tiny_llama_dir: Path, text_dir: Path, prompt_file: Path, **kw: object) -> TrainConfig:
    base = dict(out=str(out), model=str(tiny_llama_dir), head_vocab_size=512, phase1_data=(str(text_dir),),
                phase1_max_chars=20_000, phase1_dtype="float32", chunk_len=64, phase2_prompts=(str(prompt_file),),
                max_new_tokens=24, phase1_steps=12, phase2_steps=4, seqs_per_step=4, lr=3e-3, warmup_steps=2,
                checkpoint_every=5, eval_every=4)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_generation_uses_engine_and_frees_blocks(tiny_bundle, tmp_path: Path) -> None:
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    rows = generate_responses(tiny_bundle, convs, tmp_path / "a.jsonl", max_new_tokens=8, batch_size=3)
    assert len(rows) == len(PROMPTS) and all(len(r["response_ids"]) >= 1 for r in rows)
    seqs, masks = phase2_sequences(rows)
    assert all(len(s) == len(m) for s, m in zip(seqs, masks))
    # the second call resumes from the file without generating again
    assert generate_responses(tiny_bundle, convs, tmp_path / "a.jsonl", 8) == rows


def test_hidden_states_match_greedy_generation(tiny_bundle, tmp_path: Path) -> None:
    convs = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    rows = generate_responses(tiny_bundle, convs, tmp_path / "a.jsonl", max_new_tokens=6)
    seqs, _ = phase2_sequences(rows)
    _, greedy = HiddenStateExtractor(tiny_bundle.model).run(seqs)
    for i, row in enumerate(rows):
        n = len(row["prompt_ids"])
        assert greedy[i, n - 1:n - 1 + len(row["response_ids"])].tolist() == row["response_ids"]


def test_training_lowers_loss_resumes_and_exports(tiny_llama_dir, text_dir, prompt_file, tmp_path) -> None:
    cfg = tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, phase1_steps=8, phase2_steps=0)
    train(cfg)
    log = read_log(tmp_path)
    assert len(log) == 8
    assert sum(e["loss"] for e in log[-2:]) < sum(e["loss"] for e in log[:2])
    # resume: a longer run continues from the step-5 checkpoint and ends like a fresh run would
    cfg2 = tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, phase1_steps=12, phase2_steps=4, resume=True)
    (tmp_path / "checkpoint.pt").unlink()
    train(tiny_config(tmp_path / "fresh", tiny_llama_dir, text_dir, prompt_file, phase1_steps=5, phase2_steps=0))
    (tmp_path / "fresh" / "checkpoint.pt").rename(tmp_path / "checkpoint.pt")
    train(cfg2)
    assert [e["step"] for e in read_log(tmp_path)] == list(range(1, 17))
    for form in ("ibm", "compact"):
        assert (tmp_path / form / "config.json").is_file()
    raw = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert raw["borrow_base_embedding"] and raw["tie_weights"] and raw["head_vocab_size"] == 512


def test_medusa_training_exports(tiny_llama_dir, text_dir, prompt_file, tmp_path) -> None:
    train(tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, arch="medusa", phase1_steps=6,
                      phase2_steps=2))
    log = read_log(tmp_path)
    assert log[5]["loss"] < log[0]["loss"]  # phase 1; phase 2 is another distribution
    medusa = load_medusa(tmp_path / "medusa")
    assert medusa.vocab_map is not None and len(medusa.vocab_map) == 512
    assert torch.equal(load_medusa(tmp_path / "medusa").vocab_map, medusa.vocab_map)


def test_ibm_checkpoint_proposes_like_the_trained_model(tiny_bundle, tiny_llama_dir, text_dir, prompt_file,
                                                        tmp_path) -> None:
    from specserve.train.trainer import build_speculator

    out = train(tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, phase1_steps=3, phase2_steps=1))
    vocab_map = torch.load(out / "vocab_map_512.pt")
    cfg = tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file)
    model = build_speculator(cfg, tiny_bundle, vocab_map)
    model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
    emb = tiny_bundle.model.get_input_embeddings().weight.detach().float()
    loaded = load_mlp_speculator(out / "ibm")
    loaded_compact = load_mlp_speculator(out / "compact", base_embedding=emb)
    hidden = torch.randn(3, emb.shape[1])
    last = torch.tensor([5, 77, 300])
    want = model.propose_paths(hidden, last, [4, 3, 2], 5)
    got = loaded.propose_paths(hidden, last, [4, 3, 2], 5)
    assert torch.equal(want[0], got[0]) and torch.allclose(want[1], got[1])
    chain = loaded_compact.propose_paths(hidden, last, [1, 1, 1], 1)[0]  # bf16 storage: compare the best chain
    assert chain.shape == (3, 1, 3)


def test_sampled_answers_add_distinct_sequences(tiny_llama_dir, text_dir, prompt_file, tmp_path) -> None:
    cfg = tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, phase2_samples=2,
                      sample_temperature=1.0, generate_batch_size=3, only="data", phase1_steps=0)
    train(cfg)
    read = lambda name: [json.loads(line) for line in (tmp_path / "cache" / name).read_text().splitlines()]  # noqa: E731
    greedy, sampled = read("phase2_answers.jsonl"), read("phase2_samples.jsonl")
    assert len(sampled) == 2 * len(greedy)
    # two rounds over the prompts, in the greedy answers' order
    assert [r["prompt_ids"] for r in sampled] == [r["prompt_ids"] for r in greedy] * 2
    assert sum(s["response_ids"] != g["response_ids"] for s, g in zip(sampled, greedy * 2)) >= len(greedy)
    shards = sorted((tmp_path / "cache" / "phase2").glob("shard_*.pt"))
    assert sum(int(torch.load(p)["lengths"].numel()) for p in shards) == sum(
        len(r["response_ids"]) >= 2 for r in greedy + sampled)


def test_sampled_answers_need_a_temperature(tmp_path) -> None:
    with pytest.raises(ValueError, match="sample-temperature"):
        TrainConfig(out=str(tmp_path), phase2_samples=1, sample_temperature=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_pipeline_on_cuda(tiny_llama_dir, tiny_bundle, text_dir, prompt_file, tmp_path) -> None:
    from specserve.engine.model_setup import load_bundle

    cfg = tiny_config(tmp_path, tiny_llama_dir, text_dir, prompt_file, device="cuda", phase2_samples=1,
                      generate_cuda_graphs=True, generate_batch_size=4, phase1_steps=8, phase2_steps=2)
    train(cfg)
    log = read_log(tmp_path)
    assert len(log) == 10 and log[7]["loss"] < log[0]["loss"]
    assert load_mlp_speculator(tmp_path / "ibm").vocab_map.device.type == "cpu"
    # the labels: greedy tokens from the CUDA pass agree with the CPU pass on the same weights
    seqs = [json.loads(line) for line in (tmp_path / "cache" / "phase2_samples.jsonl").read_text().splitlines()]
    seqs = [r["prompt_ids"] + r["response_ids"] for r in seqs][:4]
    _, on_gpu = HiddenStateExtractor(load_bundle(str(tiny_llama_dir), "float32", "cuda").model).run(seqs)
    _, on_cpu = HiddenStateExtractor(tiny_bundle.model).run(seqs)
    assert on_gpu.device.type == "cpu" and float((on_gpu == on_cpu).float().mean()) > 0.99


def test_an_added_prompt_file_keeps_earlier_answers_and_shards(tiny_llama_dir, text_dir, prompt_file, tmp_path) -> None:
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"prompt": f"Name {n} colours of the sea."}) + "\n" for n in range(2, 9)))
    out = tmp_path / "run"
    train(tiny_config(out, tiny_llama_dir, text_dir, prompt_file, phase1_steps=0, only="data"))
    shard_dir = out / "cache" / "phase2"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shard_dir.glob("shard_*.pt")}
    answers = (out / "cache" / "phase2_answers.jsonl").read_text()
    train(tiny_config(out, tiny_llama_dir, text_dir, prompt_file, phase1_steps=0, only="data",
                      phase2_prompts=(str(prompt_file), str(extra))))
    assert (out / "cache" / "phase2_answers.jsonl").read_text().startswith(answers)  # answered once
    after = sorted(shard_dir.glob("shard_*.pt"))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in after if p.name in before} == before
    new = [p for p in after if p.name not in before]
    assert [p.name for p in after] == [f"shard_{i:05d}.pt" for i in range(len(after))] and new
    extra_ids = {tuple(torch.load(p)["input_ids"][i, :n].tolist()) for p in new
                 for i, n in enumerate(torch.load(p)["lengths"].tolist())}
    assert len(extra_ids) == 7  # the new shards hold the added file's 7 answers, and nothing else
    assert json.loads((shard_dir / "DONE").read_text())["answers"] == 2 * len(PROMPTS) + 7
