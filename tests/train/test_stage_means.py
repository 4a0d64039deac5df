"""Micro-batch results merge by their label counts, per stage."""

from __future__ import annotations

import pytest
import torch

from specserve.train.losses import LossResult
from specserve.train.trainer import merge_results, stage_means


def test_stage_means_weigh_by_labels_and_merge_keeps_totals() -> None:
    a = LossResult(torch.tensor(1.0), [2.0, 4.0], [0.5, 0.25], [0.5, 0.1], num_labels=30)
    b = LossResult(torch.tensor(3.0), [1.0, 1.0], [1.0, 0.75], [1.0, 0.7], num_labels=10)
    assert stage_means([a, b], "stage_acc") == pytest.approx([0.625, 0.375])
    merged = merge_results([a, b])
    assert merged.num_labels == 40
    assert float(merged.loss) == pytest.approx(1.5)
    assert merged.stage_losses == pytest.approx([1.75, 3.25])
    assert merged.chain_acc == pytest.approx([0.625, 0.25])
