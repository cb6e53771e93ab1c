"""--init-from: warm starts across models whose inputs differ."""
from __future__ import annotations

import torch

from moviola import Conditioning
from moviola.config import load_config


def test_a_model_without_context_frames_starts_from_one_with_them_as_it_was_given_no_frame(tmp_path):
    """--init-from a context-frame model into one without: the patch embedding keeps its x_t channels, so the
    new model's output equals the old model's given no frame."""
    from moviola.config import to_dict
    from moviola.io.checkpoint import save_checkpoint
    from moviola.models.registry import build_model
    from moviola.training.trainer import init_from_checkpoint

    over = ["model.patch_size=8", "model.hidden_size=16", "model.depth=2", "model.num_heads=2", "data.size=32",
            "data.frames=4", "conditions.num_classes=48"]
    with_ctx = load_config(overrides=[*over, "conditions.context_frames=true"])
    old = build_model(with_ctx.model, with_ctx.conditions, 3)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(tmp_path / "c", 1, to_dict(with_ctx), old, old)
    plain = load_config(overrides=over)
    new = build_model(plain.model, plain.conditions, 3)
    lines = init_from_checkpoint(new, str(tmp_path / "c"))
    assert any("narrowed" in line and "x_embedder.proj.weight" in line for line in lines)
    x, t, cond = torch.randn(2, 3, 4, 32, 32), torch.tensor([5, 600]), Conditioning(labels=torch.tensor([1, 2]))
    torch.testing.assert_close(new.eval()(x, t, cond), old.eval()(x, t, cond))
