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
    assert "init-from: input channels by group: kept ['x_t'], dropped ['context']" in lines
    x, t, cond = torch.randn(2, 3, 4, 32, 32), torch.tensor([5, 600]), Conditioning(labels=torch.tensor([1, 2]))
    torch.testing.assert_close(new.eval()(x, t, cond), old.eval()(x, t, cond))


def test_input_groups_are_matched_by_name_not_by_position(tmp_path):
    """W.A.L.T's inputs are x_t, (m ∘ z, m), x̃0: a context model started from a self-conditioned one keeps x_t's
    weights, starts its context channels at zero and drops the estimate's (which sat where context now sits)."""
    from moviola.config import to_dict
    from moviola.io.checkpoint import save_checkpoint
    from moviola.models.registry import build_model
    from moviola.training.trainer import init_from_checkpoint

    over = ["model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
            "model.pos_grid=[4,32,32]", "data.size=32", "data.frames=4"]
    old_cfg = load_config(overrides=[*over, "conditions.self_cond=0.9"])
    old = build_model(old_cfg.model, old_cfg.conditions, 3)
    with torch.no_grad():
        old.x_embedder.proj.weight.normal_()
    save_checkpoint(tmp_path / "c", 1, to_dict(old_cfg), old, old)
    new_cfg = load_config(overrides=[*over, "conditions.context_frames=true"])
    new = build_model(new_cfg.model, new_cfg.conditions, 3)
    lines = init_from_checkpoint(new, str(tmp_path / "c"))
    assert "init-from: input channels by group: kept ['x_t'], new at zero ['context'], dropped ['self_cond']" in lines
    w_new, w_old = new.x_embedder.proj.weight, old.x_embedder.proj.weight  # (D, in, p, p)
    assert torch.equal(w_new[:, :3], w_old[:, :3]) and not w_new[:, 3:7].any()
