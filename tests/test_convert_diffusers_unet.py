"""``moviola convert diffusers-unet``: a diffusers UNet2DConditionModel (saved with save_pretrained) becomes a
Video LDM checkpoint whose model, on a one-frame video, gives diffusers' output; with temporal layers the
video model still does, frame by frame; what cannot be converted is refused by name, before writing."""
from __future__ import annotations

import json

import pytest
import torch

from moviola import Conditioning
from moviola.io.checkpoint import CheckpointError
from moviola.models.loading import load_model, load_run_config

diffusers = pytest.importorskip("diffusers")
torch.set_num_threads(1)

TINY = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8)


def save_unet(root, seed=0, **kw):
    """A pipeline-like directory: unet/ (every weight random, none left at zero) and a config-only vae/."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**{**TINY, **kw}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    unet.save_pretrained(root / "unet")
    (root / "vae").mkdir()
    (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4,
                                                          "block_out_channels": [8, 8, 8, 8]}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
         "prediction_type": "v_prediction", "num_train_timesteps": 1000, "steps_offset": 1,
         "set_alpha_to_one": False}))
    return unet


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 5, 24, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2:] = False
    return x, torch.tensor([10, 700]), text, mask


@pytest.mark.parametrize("kw", [{}, dict(use_linear_projection=True, attention_head_dim=(2, 4))],
                         ids=["sd1", "sd2"])
def test_the_converted_model_gives_diffusers_output_on_a_one_frame_video(tmp_path, capsys, kw):
    from moviola.cli import main

    unet = save_unet(tmp_path / "sd", **kw)
    assert main(["convert", "diffusers-unet", str(tmp_path / "sd"), str(tmp_path / "out")]) == 0
    model = load_model(tmp_path / "out").eval()
    cfg = load_run_config(tmp_path / "out")
    assert cfg.model.family == "video_ldm" and cfg.model.temporal_layers == "none"
    assert cfg.conditions.text_channels == 24 and cfg.diffusion.prediction == "v"
    assert cfg.diffusion.schedule == "scaled_linear"
    assert (cfg.diffusion.steps_offset, cfg.diffusion.final_alpha) == (1, "first")  # SD's DDIM timesteps
    x, t, text, mask = inputs()
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
        got = model(x[:, :, None], t, Conditioning(text=text, text_mask=mask))[:, :, 0]
    assert (got - want).abs().max() < 1e-4


def test_with_temporal_layers_the_video_model_is_still_the_image_model(tmp_path):
    from moviola.interop import import_diffusers_unet

    unet = save_unet(tmp_path / "sd")
    import_diffusers_unet(tmp_path / "sd", tmp_path / "out", temporal_layers="conv_attention")
    model = load_model(tmp_path / "out").eval()
    assert any("temp_convs" in k for k in model.state_dict()) and any("temp_attentions" in k for k in model.state_dict())
    x, t, text, mask = inputs()
    video = torch.stack([x, x.flip(0), 2 * x], dim=2)  # (B, C, 3, H, W)
    with torch.no_grad():
        got = model(video, t, Conditioning(text=text, text_mask=mask))
        for i in range(3):
            want = unet(video[:, :, i], t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
            assert (got[:, :, i] - want).abs().max() < 1e-4


@pytest.mark.parametrize("kw, words", [
    (dict(class_embed_type="timestep"), ["class_embed_type"]),
    (dict(act_fn="mish"), ["act_fn", "silu"]),
    (dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")), ["do not mirror"]),
])
def test_what_cannot_be_converted_is_named_before_writing(tmp_path, kw, words):
    from moviola.interop import import_diffusers_unet

    save_unet(tmp_path / "sd", **kw)
    with pytest.raises(CheckpointError) as e:
        import_diffusers_unet(tmp_path / "sd", tmp_path / "out")
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_vae_of_another_latent_width_is_refused(tmp_path):
    from moviola.interop import import_diffusers_unet

    save_unet(tmp_path / "sd", in_channels=8, out_channels=8)
    with pytest.raises(CheckpointError, match="4 latent channels, the U-Net takes 8"):
        import_diffusers_unet(tmp_path / "sd", tmp_path / "out")
