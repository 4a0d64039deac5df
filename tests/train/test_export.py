"""Exported speculators load back exactly: IBM format, compact forms, Medusa."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from specserve.spec.checkpoint import load_mlp_speculator
from specserve.spec.medusa import MedusaConfig, MedusaHeads, load_medusa
from specserve.spec.mlp_speculator import MLPSpeculator, MLPSpeculatorConfig
from specserve.train.export import export_medusa, export_mlp

EMB, VOCAB, HEAD_VOCAB = 32, 300, 64


def random_mlp(tie: bool) -> MLPSpeculator:
    model = MLPSpeculator(MLPSpeculatorConfig(EMB, VOCAB, 3, tie_weights=tie, scale_input=True,
                                              head_vocab_size=HEAD_VOCAB))
    model.reset_parameters(torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.vocab_map = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(2))[:HEAD_VOCAB].sort().values
    return model


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert torch.equal(a.vocab_map, b.vocab_map)


@pytest.mark.parametrize("tie", [False, True])
def test_ibm_format_round_trips_exactly(tmp_path: Path, tie: bool) -> None:
    model = random_mlp(tie)
    assert_same(model, load_mlp_speculator(export_mlp(model, tmp_path / "ibm", "ibm")))


@pytest.mark.parametrize("form", ["compact", "compact-emb"])
def test_compact_forms_round_trip_exactly(tmp_path: Path, form: str) -> None:
    model = random_mlp(tie=True)
    emb = model.emb[0].weight.detach().clone()  # in training the embedding is the base model's
    base_head = torch.zeros(VOCAB, EMB)
    base_head[model.vocab_map] = model.head[0].weight.detach()
    path = export_mlp(model, tmp_path / form, form)
    stored = json.loads((path / "config.json").read_text())
    assert stored["borrow_base_embedding"] and stored.get("borrow_base_head", False) == (form == "compact")
    assert_same(model, load_mlp_speculator(path, base_embedding=emb, base_head=base_head))


def test_bf16_export_is_exact_in_bf16(tmp_path: Path) -> None:
    model = random_mlp(tie=True)
    loaded = load_mlp_speculator(export_mlp(model, tmp_path / "c", "compact-emb", torch.bfloat16),
                                 base_embedding=model.emb[0].weight.detach().bfloat16().float())
    for key, value in model.state_dict().items():
        assert torch.equal(value.bfloat16().float(), loaded.state_dict()[key]), key


def test_medusa_round_trips_exactly(tmp_path: Path) -> None:
    model = MedusaHeads(MedusaConfig(EMB, VOCAB, 3, HEAD_VOCAB))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
    model.vocab_map = torch.arange(HEAD_VOCAB) * 2
    assert_same(model, load_medusa(export_medusa(model, tmp_path / "m")))
