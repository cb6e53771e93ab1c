"""Text-to-video Latte (Latte-1) against diffusers' LatteTransformer3DModel: random weights, both
directions through ``moviola convert``, the same outputs (max abs difference < 1e-4 in fp32)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import moviola
from moviola import Conditioning
from moviola.cli import main
from moviola.config import load_config
from moviola.diffusion import spaced_timesteps
from moviola.diffusion.schedule import build_schedule
from moviola.interop import write_checkpoint_dir
from moviola.interop.diffusers_latte import diffusers_to_moviola, export_problems, moviola_to_diffusers, name_table
from moviola.models.registry import build_model

diffusers = pytest.importorskip("diffusers")
LatteTransformer3DModel = diffusers.LatteTransformer3DModel

BASE = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            cross_attention_dim=16, attention_bias=True, sample_size=16, patch_size=2,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=12, video_length=4)
TOL = 1e-4
ROOT = Path(__file__).resolve().parents[1]




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


def exported_tiny_t2v(tmp_path, autoencoder: dict, data: dict, pos_base_size: int, **sections):
    """A tiny random text-to-video Latte on ``autoencoder``, written as a checkpoint and exported with
    ``moviola convert to-diffusers``: (moviola's model, diffusers' model loaded from the export)."""
    cfg = load_config(data={
        "name": "t2v-tiny",
        "model": {"size": "tiny", "patch_size": 2, "hidden_size": 16, "depth": 4, "num_heads": 2, "learned_sigma": True,
                  "injection": "adaln_single", "pos_base_size": pos_base_size},
        "conditions": {"text_channels": 12},
        "autoencoder": autoencoder, "data": {"dataset": "folder", "root": "videos", **data}, **sections})
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, in_channels=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    write_checkpoint_dir(tmp_path / "ours", cfg, model.state_dict())
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "latte")]) == 0
    return model, LatteTransformer3DModel.from_pretrained(tmp_path / "latte").eval()


@pytest.fixture
def causal_vae_dir(tmp_path):
    """A tiny causal 3-D VAE (4× space, 4× time: 17 frames of 32×32 -> 5 latent frames of 8×8), saved."""
    from moviola.autoencoders.causal_vae import CausalVAE

    torch.manual_seed(0)
    CausalVAE(base_channels=8, channel_mults=(1, 1, 2), num_res_blocks=1, latent_channels=4, norm_groups=4,
              temporal_downsample=(True, True), spatial_downsample=(True, True)).save_pretrained(tmp_path / "cvae")
    return tmp_path / "cvae"


def test_export_of_a_causal_vae_model_runs_in_diffusers_on_its_latent_frames(tmp_path, causal_vae_dir):
    """diffusers' temporal positions are a fixed table of video_length rows: it must be the latent frame
    count (5 for 17 pixel frames), not the pixel one, or the first forward fails."""
    model, theirs = exported_tiny_t2v(tmp_path, {"kind": "causal_vae", "path": str(causal_vae_dir)},
                                      {"size": 32, "frames": 17}, pos_base_size=4)
    x, t, text, mask = text_inputs((8, 8), frames=5)
    with torch.no_grad():
        err = (model(x, t, Conditioning(text=text, text_mask=mask))
               - diffusers_out(theirs, x, t, text, mask)).abs().max().item()
    print(f"export parity on causal-VAE latents (5 latent frames): max abs diff {err:.2e}")
    assert err < TOL and theirs.config.video_length == 5


def test_export_to_diffusers_gives_the_same_output(tmp_path, vae_dir):
    model, theirs = exported_tiny_t2v(tmp_path, {"kind": "frame_vae", "path": str(vae_dir)},
                                      {"size": 128, "frames": 4}, pos_base_size=8)
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


def test_the_shipped_t2v_model_is_refused_naming_every_switch_diffusers_lacks(tmp_path, capsys):
    shipped = ROOT / "checkpoints/shapes-latte-t2v"
    assert main(["convert", "to-diffusers", str(shipped), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    for needle in ("model.injection='adaln' (needs 'adaln_single')", "model.text_pooled=True",
                   "conditions.context_frames=True", "model.pos_base_size=None",
                   "configs/shapes/latte-t2v-diffusers.yaml"):
        assert needle in err
    for representable in ("layout", "patch_embed", "temporal_pos", "qk_norm", "num_classes", "mlp_ratio",
                          "text_channels", "pos_interpolation_scale"):
        assert representable not in err


def test_a_refused_export_names_every_switch_at_once():
    cfg = load_config(overrides=[
        "model.layout=late_fusion", "model.patch_embed=tubelet", "model.tubelet_size=2", "model.temporal_pos=rope",
        "model.qk_norm=true", "model.mlp_ratio=2", "model.pos_base_size=8", "model.pos_interpolation_scale=2",
        "conditions.num_classes=3", "conditions.context_frames=true", "data.frames=4"])
    problems = "; ".join(export_problems(cfg))
    for key in ("layout", "patch_embed", "injection", "temporal_pos", "qk_norm", "mlp_ratio", "pos_interpolation_scale",
                "num_classes", "context_frames", "text_channels"):
        assert key in problems, key
    assert "text_pooled" not in problems and "pos_base_size=" not in problems


def test_the_shipped_diffusers_config_exports_and_runs_in_diffusers(monkeypatch):
    """configs/shapes/latte-t2v-diffusers.yaml: the shipped T2V model's run with only the switches diffusers
    lacks changed, and a model built from it (random weights) exports and gives diffusers' output."""
    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/shapes/latte-t2v-diffusers.yaml")
    assert export_problems(cfg) == []

    def flat(c) -> dict:
        sections = dataclasses.asdict(c).items()
        return {f"{s}.{k}": v for s, sec in sections if isinstance(sec, dict) for k, v in sec.items()}
    ours, shipped = flat(cfg), flat(load_config("configs/shapes/latte-t2v-causal-vae.yaml"))
    assert {k for k in ours if ours[k] != shipped[k]} == {
        "model.injection", "model.pos_base_size", "model.text_pooled", "conditions.context_frames",
        "conditions.context_dropout"}
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, in_channels=4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    config, sd = moviola_to_diffusers(cfg, model.state_dict())
    assert (config["video_length"], config["sample_size"], config["caption_channels"]) == (5, 8, 384)
    theirs = LatteTransformer3DModel.from_config(config).eval()
    theirs.load_state_dict(sd)  # strict
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 4, 5, 8, 8, generator=g), torch.randn(1, 16, 384, generator=g)
    with torch.no_grad():
        err = (model(x, torch.tensor([500]), Conditioning(text=text))
               - diffusers_out(theirs, x, torch.tensor([500]), text)).abs().max().item()
    print(f"latte-t2v-diffusers.yaml export parity: max abs diff {err:.2e}")
    assert err < TOL


@pytest.mark.parametrize("sampler,cls", [("ddim", "DDIMScheduler"), ("ddpm", "DDPMScheduler"),
                                         ("dpm++2m", "DPMSolverMultistepScheduler")])
def test_export_writes_the_scheduler_moviola_samples_with(tmp_path, vae_dir, sampler, cls):
    """scheduler_config.json beside the transformer: the run's betas (cosine, zero terminal SNR),
    v-prediction and trailing spacing, as the diffusers scheduler of the run's sampler."""
    diffusion = {"schedule": "cosine", "prediction": "v", "zero_terminal_snr": True, "timestep_spacing": "trailing"}
    exported_tiny_t2v(tmp_path, {"kind": "frame_vae", "path": str(vae_dir)}, {"size": 128, "frames": 4},
                      pos_base_size=8, diffusion=diffusion, sample={"sampler": sampler})
    scheduler = getattr(diffusers, cls).from_pretrained(tmp_path / "latte")
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.timestep_spacing == "trailing"
    ours = build_schedule(load_config(data={"diffusion": diffusion}).diffusion).alphas_cumprod
    theirs = scheduler.alphas_cumprod.double()
    assert theirs[-1] < 1e-6 and torch.allclose(theirs, ours, atol=1e-6)
    scheduler.set_timesteps(25)
    assert scheduler.timesteps.tolist() == spaced_timesteps(25, 1000, "trailing")


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
