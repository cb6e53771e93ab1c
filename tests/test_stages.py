"""train.stage: which parameters a stage trains, for each Latte layout."""
from __future__ import annotations

import pytest
import torch

from moviola import Conditioning
from moviola.config import ConditionsConfig, LatteConfig
from moviola.models.latte import Latte


def build(layout: str) -> Latte:
    cfg = LatteConfig(patch_size=4, hidden_size=16, depth=2, num_heads=2, layout=layout)
    torch.manual_seed(0)
    return Latte.from_config(cfg, ConditionsConfig(num_classes=3), 3)


@pytest.mark.parametrize("layout", ["interleaved", "late_fusion"])
def test_a_temporal_stage_trains_the_temporal_blocks_and_nothing_else(layout):
    model = build(layout)
    temporal = {id(p) for p in model.parameter_groups("temporal")}
    names = {n for n, p in model.named_parameters() if id(p) in temporal}
    assert names == {n for n, _ in model.named_parameters() if n.startswith("temporal_blocks.")}
    with torch.no_grad():  # live gates and output: gradients reach every block
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    for p in model.parameters():
        p.requires_grad_(id(p) in temporal)
    x = torch.randn(2, 3, 4, 8, 8)
    model(x, torch.tensor([3, 600]), Conditioning(labels=torch.tensor([0, 1]))).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == names and all(g.abs().sum() > 0 for n, g in grads.items() if n.endswith("qkv.weight"))


@pytest.mark.parametrize("layout", ["factorized_attention", "factorized_heads"])
@pytest.mark.parametrize("stage", ["temporal", "spatial"])
def test_a_factorized_layout_splits_no_stage(layout, stage):
    """One modulation (or one attention) serves both axes: freezing half would freeze part of the other."""
    model = build(layout)
    with pytest.raises(ValueError, match="shares layers between the axes"):
        model.parameter_groups(stage)
    assert len(model.parameter_groups("all")) == len(list(model.parameters()))
