"""Text-to-video Latte (Latte-1) against diffusers' LatteTransformer3DModel: random weights, both
directions through ``moviola convert``, the same outputs (max abs difference < 1e-4 in fp32)."""
from __future__ import annotations

import json

import pytest
import torch

import moviola
from moviola import Conditioning
from moviola.cli import main
from moviola.config import load_config
from moviola.interop import write_checkpoint_dir
from moviola.interop.diffusers_latte import diffusers_to_moviola, name_table
from moviola.models.registry import build_model

diffusers = pytest.importorskip("diffusers")
LatteTransformer3DModel = diffusers.LatteTransformer3DModel

BASE = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=16, attention_bias=True, sample_size=16, patch_size=2,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=12, video_length=4)
TOL = 1e-4




def random_diffusers(seed: int = 0, **overrides) -> LatteTransformer3DModel:
    torch.manual_seed(seed)
    model = LatteTransformer3DModel(**{**BASE, **overrides}).eval()
    with torch.no_grad():  # diffusers' init leaves some layers at zero: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model


def text_inputs(size: tuple[int, int], frames: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, *size, generator=g)
    text = torch.randn(2, 7, 12, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    return x, torch.tensor([5, 700]), text, mask


def diffusers_out(model, x, t, text, mask=None) -> torch.Tensor:
    bias = None
    if mask is not None:  # diffusers' Latte takes a bias per spatial row: (B·F, 1, L), 0 keep / -10000 drop
        bias = ((~mask).float() * -10000.0)[:, None].repeat_interleave(x.shape[2], dim=0)
    with torch.no_grad():
        return model(x, t, encoder_hidden_states=text, encoder_attention_mask=bias, return_dict=False)[0]


@pytest.mark.parametrize("overrides,size", [
    ({}, (16, 16)),  # the training grid
    ({}, (12, 8)),  # another, non-square grid: PixArt's base-size position scaling
    ({"sample_size": 128, "patch_size": 8}, (32, 32)),  # interpolation_scale = 2
])
def test_import_from_diffusers_gives_the_same_output(tmp_path, vae_dir, overrides, size, capsys):
    ref_model = random_diffusers(**overrides)
    ref_model.save_pretrained(tmp_path / "latte")
    assert main(["convert", "diffusers-latte", str(tmp_path / "latte"), str(tmp_path / "ours"),
                 "--vae", str(vae_dir)]) == 0
    model = moviola.load_model(tmp_path / "ours")
    assert model.accepts == {"text", "text_mask"} and model.learned_sigma
    x, t, text, mask = text_inputs(size)
    with torch.no_grad():
        plain = model(x, t, Conditioning(text=text))
        masked = model(x, t, Conditioning(text=text, text_mask=mask))
    err = (plain - diffusers_out(ref_model, x, t, text)).abs().max().item()
    err_mask = (masked - diffusers_out(ref_model, x, t, text, mask)).abs().max().item()
    print(f"import parity {overrides or 'base'} {size}: max abs diff {err:.2e}, with text mask {err_mask:.2e}")
    assert err < TOL and err_mask < TOL
    assert (masked - plain).abs().max() > 1e-3  # the mask matters
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["data"]["frames"] == 4 and cfg["data"]["size"] == ref_model.config.sample_size * 8


def test_export_to_diffusers_gives_the_same_output(tmp_path, vae_dir):
    cfg = load_config(data={
        "name": "t2v-tiny",
        "model": {"size": "tiny", "patch_size": 2, "hidden_size": 16, "depth": 4, "num_heads": 2, "learned_sigma": True,
                  "injection": "adaln_single", "pos_base_size": 8},
        "conditions": {"text_channels": 12},
        "autoencoder": {"kind": "frame_vae", "path": str(vae_dir)},
        "data": {"dataset": "folder", "root": "videos", "size": 128, "frames": 4}})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, in_channels=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    write_checkpoint_dir(tmp_path / "ours", cfg, model.state_dict())
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "latte")]) == 0
    theirs = LatteTransformer3DModel.from_pretrained(tmp_path / "latte").eval()
    x, t, text, mask = text_inputs((16, 16))
    with torch.no_grad():
        err = (model(x, t, Conditioning(text=text)) - diffusers_out(theirs, x, t, text)).abs().max().item()
        err_mask = (model(x, t, Conditioning(text=text, text_mask=mask))
                    - diffusers_out(theirs, x, t, text, mask)).abs().max().item()
    print(f"export parity: max abs diff {err:.2e}, with text mask {err_mask:.2e}")
    assert err < TOL and err_mask < TOL
    # and back: the round trip returns the same tensors
    _, back = diffusers_to_moviola(theirs.state_dict(), dict(theirs.config))
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_name_table_covers_both_models_exactly():
    cfg = load_config(overrides=["model.injection=adaln_single", "conditions.text_channels=12",
                                 "model.hidden_size=16", "model.num_heads=2", "model.depth=4"])
    ours = build_model(cfg.model, cfg.conditions, 4)
    table = name_table(2)
    assert {k for k, _ in table} == set(ours.state_dict())
    assert {t for _, ts in table for t in ts} == set(random_diffusers().state_dict())


def test_converted_config_splits_into_model_conditions_and_shape():
    """The text width is a condition (conditions.text_channels), not a model key; the sections build the model
    whose state dict the converter returns."""
    theirs = random_diffusers()
    info, sd = diffusers_to_moviola(theirs.state_dict(), BASE)
    assert set(info) == {"model", "conditions", "shape"}
    assert info["conditions"] == {"num_classes": 0, "text_channels": 12}
    assert info["shape"] == {"latent_size": 16, "frames": 4, "in_channels": 4}
    assert (info["model"]["injection"], info["model"]["hidden_size"], info["model"]["depth"],
            info["model"]["learned_sigma"], info["model"]["pos_base_size"]) == ("adaln_single", 16, 4, True, 8)
    cfg = load_config(data={"model": info["model"], "conditions": info["conditions"]})
    model = build_model(cfg.model, cfg.conditions, info["shape"]["in_channels"])
    model.load_state_dict(sd)  # strict: every key and shape fits


def test_pipeline_root_finds_transformer_and_vae(tmp_path, vae_dir):
    random_diffusers().save_pretrained(tmp_path / "Latte-1" / "transformer")
    vae_dir.rename(tmp_path / "Latte-1" / "vae")
    assert main(["convert", "diffusers-latte", str(tmp_path / "Latte-1"), str(tmp_path / "ours")]) == 0
    model = moviola.load_model(tmp_path / "ours")
    assert model.conditions.text_channels == 12 and "text" in model.accepts


def test_empty_prompt_means_no_text(tmp_path):
    """An all-False text_mask row (the null condition of guidance) contributes nothing, as no text."""
    _, sd = diffusers_to_moviola(random_diffusers().state_dict(), BASE)
    cfg = load_config(overrides=["model.injection=adaln_single", "conditions.text_channels=12", "model.hidden_size=16",
                                 "model.num_heads=2", "model.depth=4", "model.learned_sigma=true",
                                 "model.pos_base_size=8"])
    model = build_model(cfg.model, cfg.conditions, 4).eval()
    model.load_state_dict(sd)
    x, t, text, mask = text_inputs((16, 16))
    cond = Conditioning(text=text, text_mask=mask).null()
    with torch.no_grad():
        assert torch.allclose(model(x, t, cond), model(x, t), atol=1e-6)
        with pytest.raises(ValueError, match="labels"):
            model(x, t, Conditioning(labels=torch.tensor([0, 1])))
        with pytest.raises(ValueError, match="text must have shape"):
            model(x, t, Conditioning(text=torch.randn(2, 7, 5)))


@pytest.mark.parametrize("change,needle", [({"norm_type": "layer_norm"}, "norm_type"),
                                           ({"activation_fn": "geglu"}, "activation_fn")])
def test_unsupported_diffusers_configs_are_named(tmp_path, vae_dir, capsys, change, needle):
    random_diffusers(**change).save_pretrained(tmp_path / "latte")
    assert main(["convert", "diffusers-latte", str(tmp_path / "latte"), str(tmp_path / "o"), "--vae", str(vae_dir)]) == 2
    assert needle in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_export_refuses_what_diffusers_cannot_express(tmp_path, capsys):
    cfg = load_config(overrides=["model.hidden_size=16", "model.num_heads=2", "model.depth=2",
                                 "model.layout=late_fusion", "data.size=16", "data.frames=2"])
    model = build_model(cfg.model, cfg.conditions, 3)
    write_checkpoint_dir(tmp_path / "ours", cfg, model.state_dict())
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "latte")]) == 2
    err = capsys.readouterr().err
    assert "layout='late_fusion'" in err and "injection='adaln'" in err and "text_channels" in err


def test_a_converted_pipeline_root_samples_from_prompts_with_its_own_text_encoder(tmp_path, tiny_bert_dir):
    """A Latte-1-shaped pipeline root (transformer/, vae/, text_encoder/, tokenizer/) converts into a
    checkpoint whose config names that text encoder, and moviola samples it from a prompt."""
    import shutil

    import transformers
    from diffusers import AutoencoderKL

    root = tmp_path / "Latte-1"
    random_diffusers().save_pretrained(root / "transformer")
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4).save_pretrained(
        root / "vae")
    t5 = transformers.T5Config(vocab_size=32, d_model=12, d_kv=6, d_ff=24, num_layers=1, num_heads=2)
    transformers.T5EncoderModel(t5).save_pretrained(root / "text_encoder")
    shutil.copytree(tiny_bert_dir, root / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    assert main(["convert", "diffusers-latte", str(root), str(tmp_path / "ours")]) == 0
    cfg = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg["text"]["encoder"] == str((root / "text_encoder").absolute()) and cfg["text"]["max_length"] == 120
    pipe = moviola.load_pipeline(tmp_path / "ours", device="cpu")
    video = pipe(prompt=["a red circle moving right"], num_frames=2, height=16, width=16, steps=2, cfg=2.0)
    assert video.shape == (1, 3, 2, 16, 16) and torch.isfinite(video).all()
