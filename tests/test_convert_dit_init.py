"""``--init-from`` an image DiT: what lands in the spatial layers, what stays at initialization,
and the log that says so."""
from __future__ import annotations

import pytest
import torch

from moviola.config import ConfigError, load_config
from moviola.interop import init_from_dit
from moviola.models.registry import build_model
from moviola.training.trainer import Trainer

D, P, C = 32, 2, 3


def dit_state_dict(depth: int = 4, num_classes: int = 1000, learn_sigma: bool = True, seed: int = 0) -> dict:
    """Random weights under DiT's names (facebookresearch/DiT models.py)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    out = 2 * C if learn_sigma else C
    sd = {"pos_embed": rnd(1, 16, D), "x_embedder.proj.weight": rnd(D, C, P, P), "x_embedder.proj.bias": rnd(D),
          "t_embedder.mlp.0.weight": rnd(D, 256), "t_embedder.mlp.0.bias": rnd(D),
          "t_embedder.mlp.2.weight": rnd(D, D), "t_embedder.mlp.2.bias": rnd(D),
          "y_embedder.embedding_table.weight": rnd(num_classes + 1, D),
          "final_layer.linear.weight": rnd(P * P * out, D), "final_layer.linear.bias": rnd(P * P * out),
          "final_layer.adaLN_modulation.1.weight": rnd(2 * D, D), "final_layer.adaLN_modulation.1.bias": rnd(2 * D)}
    for i in range(depth):
        for name, shape in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (4 * D, D)),
                            ("mlp.fc2", (D, 4 * D)), ("adaLN_modulation.1", (6 * D, D))):
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = rnd(*shape), rnd(shape[0])
    return sd


def model(*overrides: str):
    cfg = load_config(overrides=["model.hidden_size=32", "model.num_heads=4", "model.depth=4", "model.patch_size=2",
                                 "conditions.num_classes=48", "model.learned_sigma=true", "data.size=32",
                                 "data.frames=4", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.conditions, C)


def test_spatial_blocks_come_from_evenly_spread_dit_blocks(tmp_path):
    sd = dit_state_dict()
    torch.save({"ema": sd}, tmp_path / "dit.pt")
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lines = init_from_dit(m, tmp_path / "dit.pt")
    after = m.state_dict()
    for k, j in ((0, 0), (1, 2)):  # 2 spatial blocks from 4 DiT blocks: 0 and 2
        for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            assert torch.equal(after[f"spatial_blocks.{k}.{part}.weight"], sd[f"blocks.{j}.{part}.weight"])
    for k in after:
        if k.startswith("temporal_blocks.") or k.startswith("y_embedder."):
            assert torch.equal(after[k], before[k]), k  # left at initialization
    for k in ("x_embedder.proj.weight", "t_embedder.mlp.2.bias", "final_layer.linear.weight"):
        assert torch.equal(after[k], sd[k])
    text = "\n".join(lines)
    assert "y_embedder: dropped (1000 classes in the file, the model has 48)" in text
    assert "left at initialization: temporal_blocks.{0,1}" in text and "y_embedder" in text.split("left at")[1]
    assert "not used from the file: blocks.{1,3}" in text and "pos_embed" in text
    assert "<- DiT blocks [0, 2]" in text


def test_variant_3_gets_dit_attention_with_its_temporal_attention_switched_off(tmp_path):
    sd = dit_state_dict()
    m = model("model.layout=factorized_attention")
    torch.save(sd, tmp_path / "dit.pt")
    init_from_dit(m, tmp_path / "dit.pt")
    ada = m.blocks[1].adaLN_modulation[1].weight
    assert torch.equal(ada[:3 * D], sd["blocks.2.adaLN_modulation.1.weight"][:3 * D])
    assert torch.equal(ada[6 * D:], sd["blocks.2.adaLN_modulation.1.weight"][3 * D:])
    assert ada[3 * D:6 * D].abs().max() == 0  # the temporal attention's shift, scale, gate: still zero
    assert torch.equal(m.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_tubelet_kernel_is_inflated_and_matching_labels_load(tmp_path):
    sd = dit_state_dict(num_classes=48, learn_sigma=False)
    torch.save(sd, tmp_path / "dit.pt")
    m = model("model.patch_embed=tubelet", "model.tubelet_size=2", "model.learned_sigma=false")
    lines = init_from_dit(m, tmp_path / "dit.pt")
    w = m.x_embedder.proj.weight  # (D, C, 2, P, P)
    assert torch.allclose(w.sum(dim=2), sd["x_embedder.proj.weight"], atol=1e-6)
    assert torch.equal(m.y_embedder.embedding_table.weight, sd["y_embedder.embedding_table.weight"])
    assert any("inflated" in line for line in lines)
    assert any("final_layer.linear.weight: left at initialization" in line for line in lines)  # 2 frames per token


def test_trainer_init_from_starts_from_the_dit_and_refuses_resume(tmp_path):
    sd = dit_state_dict()
    torch.save(sd, tmp_path / "dit.pt")
    cfg = load_config(overrides=["model.hidden_size=32", "model.num_heads=4", "model.depth=4", "model.patch_size=2",
                                 "conditions.num_classes=48", "model.learned_sigma=true", "data.size=32",
                                 "data.frames=4", "data.count=4", "train.batch_size=2", "train.steps=1",
                                 "train.device=cpu"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True, init_from=str(tmp_path / "dit.pt"))
    assert torch.equal(trainer.model.spatial_blocks[1].attn.qkv.weight, sd["blocks.2.attn.qkv.weight"])
    assert torch.equal(trainer.ema.model.spatial_blocks[1].attn.qkv.weight, sd["blocks.2.attn.qkv.weight"])
    trainer.train()
    with pytest.raises(ConfigError, match="init-from"):
        Trainer(cfg, tmp_path / "run", resume=True, quiet=True, init_from=str(tmp_path / "dit.pt"))


def test_cli_train_init_from_logs_what_it_loaded(tmp_path, capsys):
    from moviola.cli import main

    torch.save(dit_state_dict(), tmp_path / "dit.pt")
    (tmp_path / "c.yaml").write_text(
        "model: {hidden_size: 32, num_heads: 4, depth: 4, patch_size: 2, learned_sigma: true}\n"
        "conditions: {num_classes: 48}\n"
        "data: {size: 32, frames: 4, count: 4}\ntrain: {batch_size: 2, device: cpu, log_every: 1}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--steps", "1",
                 "--init-from", str(tmp_path / "dit.pt")]) == 0
    out = capsys.readouterr().out
    assert "init-from" in out and "left at initialization: temporal_blocks.{0,1}" in out
    assert main(["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run4"), "--steps", "1",
                 "--set", "model.layout=factorized_heads", "--init-from", str(tmp_path / "dit.pt")]) == 2
    assert "layout factorized_heads" in capsys.readouterr().err and not (tmp_path / "run4").exists()
