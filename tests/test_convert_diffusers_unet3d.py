"""``moviola convert diffusers-unet3d``: a diffusers UNet3DConditionModel (ModelScope's layout, saved with
save_pretrained, every weight random) becomes a VideoCrafter checkpoint whose model gives diffusers' output on a
video; the text mask masks exactly the padding (diffusers ignores masks: compared with the unpadded text);
what cannot be converted is refused by name, before writing."""
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
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8)
# three levels, two resnets each, attention at two levels, 16-channel heads (transformer_in: 8 × 16 on 32
# channels), a learned variance; run on a 6×10 latent (not a multiple of 4: diffusers forwards the sizes)
DEEP = dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=16, attention_head_dim=16,
            down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"), out_channels=8)


def save_unet(root, seed=0, **kw):
    """A pipeline-like directory: unet/ (every weight random: diffusers zero-initializes the temporal layers'
    last layers), a config-only vae/ and a scheduler config."""
    torch.manual_seed(seed)
    unet = diffusers.UNet3DConditionModel(**{**TINY, **kw}).eval()
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
        {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.00085, "beta_end": 0.012,
         "prediction_type": "epsilon", "num_train_timesteps": 1000}))
    return unet


def inputs(size=(8, 8), frames=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, frames, *size, generator=g)
    text = torch.randn(2, 6, 24, generator=g)
    return x, torch.tensor([10, 700]), text


@pytest.mark.parametrize("kw, size", [({}, (8, 8)), (DEEP, (6, 10))], ids=["tiny", "deep"])
def test_the_converted_model_gives_diffusers_output(tmp_path, kw, size):
    from moviola.cli import main

    unet = save_unet(tmp_path / "ms", **kw)
    assert main(["convert", "diffusers-unet3d", str(tmp_path / "ms"), str(tmp_path / "out")]) == 0
    model = load_model(tmp_path / "out").eval()
    cfg = load_run_config(tmp_path / "out")
    assert cfg.model.family == "videocrafter" and cfg.model.temporal_conv and not cfg.model.relative_position
    assert cfg.model.addition_attention and cfg.model.temporal_self_attention_only
    assert cfg.model.head_channels == unet.config.attention_head_dim == cfg.model.input_attention_head_channels
    assert cfg.conditions.text_channels == 24 and cfg.diffusion.schedule == "linear"
    assert model.learned_sigma == (unet.config.out_channels == 8)
    assert model.unet.transformer_in.proj_in.out_features == 8 * unet.config.attention_head_dim  # 8 heads
    x, t, text = inputs(size)
    lengths = [6, 3]  # the second prompt has 3 real tokens, then padding
    mask = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        want = unet(x, t, encoder_hidden_states=text).sample
        got = model(x, t, Conditioning(text=text))
        assert got.shape == want.shape == (2, unet.config.out_channels, 5, *size)
        assert (got - want).abs().max() < 1e-4
        masked = model(x, t, Conditioning(text=text, text_mask=mask))
        for b, n in enumerate(lengths):  # diffusers ignores attention masks: give it the real tokens alone
            want_b = unet(x[b:b + 1], t[b:b + 1], encoder_hidden_states=text[b:b + 1, :n]).sample
            assert (masked[b:b + 1] - want_b).abs().max() < 1e-4
        assert (masked[1] - got[1]).abs().max() > 1e-3  # the padding mattered, and was masked


def test_the_temporal_layers_were_converted_live(tmp_path):
    """Frames mix: changing one frame changes the others' outputs, as in diffusers."""
    unet = save_unet(tmp_path / "ms")
    from moviola.interop import import_diffusers_unet3d

    import_diffusers_unet3d(tmp_path / "ms", tmp_path / "out")
    model = load_model(tmp_path / "out").eval()
    x, t, text = inputs()
    y = x.clone()
    y[:, :, 4] += 1.0
    with torch.no_grad():
        moved = (model(y, t, Conditioning(text=text)) - model(x, t, Conditioning(text=text)))[:, :, 0].abs().max()
        moved_diffusers = (unet(y, t, encoder_hidden_states=text).sample
                           - unet(x, t, encoder_hidden_states=text).sample)[:, :, 0].abs().max()
    assert moved > 1e-3 and abs(moved - moved_diffusers) < 1e-4


def _edit_config(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("kw, edit, words", [
    (dict(mid_block_scale_factor=2.0), {}, ["mid_block_scale_factor=2.0"]),
    (dict(time_cond_proj_dim=8), {}, ["time_cond_proj_dim=8"]),
    (dict(act_fn="gelu"), {}, ["act_fn='gelu'", "'silu'"]),
    ({}, {"addition_embed_type": "text"}, ["addition_embed_type (unknown key)"]),
    ({}, {"attention_head_dim": [8, 8]}, ["attention_head_dim=[8, 8]"]),
    (dict(up_block_types=("CrossAttnUpBlock3D", "UpBlock3D")), {}, ["do not mirror"]),
    (dict(block_out_channels=(32, 48), attention_head_dim=32), {}, ["attention_head_dim=32", "[48]"]),
], ids=["mid_scale", "time_cond", "act_fn", "unknown", "head_tuple", "mirror", "uneven_heads"])
def test_what_cannot_be_converted_is_named_before_writing(tmp_path, kw, edit, words):
    from moviola.interop import import_diffusers_unet3d

    save_unet(tmp_path / "ms", **kw)
    _edit_config(tmp_path / "ms" / "unet" / "config.json", **edit)
    with pytest.raises(CheckpointError) as e:
        import_diffusers_unet3d(tmp_path / "ms", tmp_path / "out")
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_2d_unet_is_refused_with_the_command_that_takes_it(tmp_path):
    from moviola.interop import import_diffusers_unet3d

    unet = diffusers.UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=24,
                                          down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                          up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8)
    unet.save_pretrained(tmp_path / "sd" / "unet")
    with pytest.raises(CheckpointError, match="UNet2DConditionModel.*not a UNet3DConditionModel"):
        import_diffusers_unet3d(tmp_path / "sd", tmp_path / "out")
