"""The shipped default speculator: small enough to ship, loads for the default model, is the default."""

from __future__ import annotations

import json

import torch

from specserve.spec.checkpoint import load_mlp_speculator
from specserve.spec.factory import SHIPPED_DIR, default_speculator_for

SHIPPED = SHIPPED_DIR / "smollm2-135m-instruct-mlp"


def test_shipped_speculator_is_small_and_in_ibm_format() -> None:
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 20 * 2**20
    raw = json.loads((SHIPPED / "config.json").read_text())
    assert raw["architectures"] == ["MLPSpeculatorPreTrainedModel"] and raw["n_predict"] == 3


def test_shipped_speculator_loads_for_the_default_model(default_bundle) -> None:
    assert default_speculator_for(default_bundle.model_dir) == SHIPPED
    emb = default_bundle.model.get_input_embeddings().weight.detach().float()
    model = load_mlp_speculator(SHIPPED, base_embedding=emb)
    paths, scores = model.propose_paths(torch.randn(2, emb.shape[1]), torch.tensor([1, 2]), [4, 3, 2], 5)
    assert paths.shape == (2, 5, 3) and bool((scores[:, :-1] >= scores[:, 1:]).all())
