"""TemporalDecoderVAE (Video LDM's temporal decoder) on a tiny random frame VAE, fp32."""
from __future__ import annotations

import json

import pytest
import torch

from moviola.autoencoders.frame_vae import FrameVAE
from moviola.autoencoders.temporal_decoder import (AlphaBlend, TemporalConvBlock, TemporalDecoderVAE,
                                                   TemporalSelfAttention)

TOL = 1e-6


def tiny_frame_vae(seed: int = 0) -> FrameVAE:
    torch.manual_seed(seed)
    fv = FrameVAE.new(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, latent_channels=4, norm_groups=4)
    fv.vae.requires_grad_(False)
    fv.scaling_factor, fv.shift_factor = 0.7, 0.1  # a non-trivial normalization, to catch a mismatch
    return fv


def video(B: int = 2, T: int = 5, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, T, 16, 16, generator=g) * 2 - 1  # (B, 3, T, H, W) in [-1, 1]


def latents(B: int = 2, T: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randn(B, 4, T, 8, 8, generator=torch.Generator().manual_seed(seed))


def perturb(model: TemporalDecoderVAE, seed: int = 3, std: float = 0.3) -> None:
    """Move every temporal weight and α away from its initialization (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.temporal.named_parameters():
            if name.endswith("mix_logit"):
                p.fill_(-0.5)  # α ≈ 0.38
            else:
                p.add_(torch.randn(p.shape, generator=g) * std)


def assert_decodes_like(model: TemporalDecoderVAE, fv: FrameVAE, z: torch.Tensor) -> float:
    diff = (model.decode(z) - fv.decode(z)).abs().max().item()
    assert diff <= TOL, f"temporal decoder differs from the frame decoder by {diff:.3g}"
    return diff


@pytest.fixture(scope="module")
def fv() -> FrameVAE:
    return tiny_frame_vae()


@pytest.fixture
def model(fv) -> TemporalDecoderVAE:
    return TemporalDecoderVAE.from_frame_vae(fv)


# ----------------------------------------------------------------------------- initialization
@pytest.mark.parametrize("options", [
    {},
    {"spatial_kernel": 3, "attention": "all"},
    {"where": "mid", "conv": False},
    {"where": "up", "attention": False, "temporal_kernel": 5},
])
def test_at_init_decodes_exactly_like_the_frame_decoder(fv, options):
    model = TemporalDecoderVAE.from_frame_vae(fv, **options)
    assert_decodes_like(model, fv, latents())
    assert_decodes_like(model, fv, fv.encode(video()))  # a real latent too
    # forward (training path, sampled posterior) too, with the same noise
    x = video()
    ours = model(x, sample=True, generator=torch.Generator().manual_seed(5))
    theirs = fv(x, sample=True, generator=torch.Generator().manual_seed(5))
    assert (ours.reconstruction - theirs.reconstruction).abs().max() <= TOL
    assert torch.equal(ours.mean, theirs.mean) and torch.equal(ours.logvar, theirs.logvar)


def test_control_exactness_check_fails_when_the_init_is_wrong(fv, model):
    """The check above can fail: exactness comes from the zero-initialized last layers, not α."""
    z = latents()
    with torch.no_grad():  # α alone does not matter while the branches output zeros
        for layer in model.modules():
            if isinstance(layer, AlphaBlend):
                layer.mix_logit.fill_(-3.0)
    assert_decodes_like(model, fv, z)
    with torch.no_grad():  # a wrong init: the last layers random, as a default-initialized layer would be
        for m in model.modules():
            if isinstance(m, TemporalConvBlock):
                torch.nn.init.normal_(m.conv2.weight, std=0.1)
            if isinstance(m, TemporalSelfAttention):
                torch.nn.init.normal_(m.attn.proj.weight, std=0.1)
    with pytest.raises(AssertionError, match="differs from the frame decoder"):
        assert_decodes_like(model, fv, z)


def test_encode_is_the_frame_vaes_bit_for_bit(fv, model):
    x = video()
    assert torch.equal(model.encode(x), fv.encode(x))
    a = model.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    b = fv.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    perturb(model)  # the decoder's training never touches the encoder
    assert torch.equal(model.encode(x), fv.encode(x))
    assert (model.scaling_factor, model.shift_factor) == (0.7, 0.1)
    assert (model.latent_channels, model.spatial_factor, model.temporal_factor) == (4, 2, 1)


# ----------------------------------------------------------------------------- frames mix
def test_frames_mix_only_after_the_temporal_layers_move(fv, model):
    z = latents(B=1, T=6)
    z2 = z.clone()
    z2[:, :, 2] += 1.0  # change frame 2 only
    before, before2 = model.decode(z), model.decode(z2)
    assert not torch.equal(before[:, :, 2], before2[:, :, 2])
    for t in (0, 1, 3, 4, 5):  # at init each frame is decoded alone
        assert torch.equal(before[:, :, t], before2[:, :, t])

    perturb(model)
    after, after2 = model.decode(z), model.decode(z2)
    assert (after - before).abs().max() > 1e-2  # the output changed
    assert (after2[:, :, 3] - after[:, :, 3]).abs().max() > 1e-4  # frame 2 now reaches frame 3
    assert (after2[:, :, 5] - after[:, :, 5]).abs().max() > 1e-6  # and, through attention, frame 5


def test_a_conv_only_decoder_has_a_bounded_temporal_receptive_field(fv):
    """One (3,1,1) block in the mid block: two convs, so frame t sees frames t-2..t+2 only."""
    model = TemporalDecoderVAE.from_frame_vae(fv, where="mid", attention=False)
    del model.temporal["mid_1"]
    perturb(model)
    z = latents(B=1, T=7)
    z2 = z.clone()
    z2[:, :, 1] += 1.0
    diff = (model.decode(z2) - model.decode(z)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
    assert (diff[:4] > 1e-5).all() and (diff[4:] == 0).all(), diff


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_any_number_of_frames(fv, frames):
    model = TemporalDecoderVAE.from_frame_vae(fv, attention="all", spatial_kernel=3)
    z = latents(B=2, T=frames)
    assert_decodes_like(model, fv, z)
    perturb(model)
    out = model.decode(z)
    assert out.shape == (2, 3, frames, 16, 16) and torch.isfinite(out).all()
    rec = model(video(B=1, T=frames)).reconstruction
    assert rec.shape == (1, 3, frames, 16, 16)
    # whole clips per decode pass: a small chunk budget gives the same video
    model.base.chunk_frames = 1
    assert (model.decode(z) - out).abs().max() <= 1e-5  # batch size changes float rounding only


def test_batch_elements_do_not_mix(fv, model):
    perturb(model)
    z = latents(B=2, T=4)
    z2 = z.clone()
    z2[1] += 1.0
    assert torch.equal(model.decode(z)[0], model.decode(z2)[0])


# ----------------------------------------------------------------------------- training
def _loss(model: TemporalDecoderVAE) -> torch.Tensor:
    out = model(video(B=1, T=4), generator=torch.Generator().manual_seed(0))
    return out.reconstruction.square().mean()


def test_gradients_reach_only_the_temporal_layers(fv, model):
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.temporal.parameters()}
    alphas = [m.mix_logit for m in model.modules() if isinstance(m, AlphaBlend)]
    assert alphas and all(id(a) in trainable and a.requires_grad for a in alphas)

    _loss(model).backward()
    for name, p in model.base.named_parameters():  # encoder and 2-D decoder: frozen
        assert p.grad is None, name
    for name, p in model.temporal.named_parameters():
        assert p.grad is not None, name
    # the zero-initialized last layers learn at step 0 (α = 0.5 lets gradient through)
    last = [m.conv2.weight for m in model.modules() if isinstance(m, TemporalConvBlock)]
    assert all(w.grad.abs().sum() > 0 for w in last)

    perturb(model)  # away from init, every temporal weight and every α gets a gradient
    model.zero_grad(set_to_none=True)
    _loss(model).backward()
    for name, p in model.temporal.named_parameters():
        assert p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.base.parameters())


def test_one_step_trains_the_decoder_not_the_encoder(fv, model):
    x = video()
    enc = model.encode(x)
    before = model.decode(enc)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1.0)
    _loss(model).backward()
    opt.step()
    assert torch.equal(model.encode(x), enc)
    assert (model.decode(enc) - before).abs().max() > 1e-4


def test_finetune_spatial_trains_the_2d_decoder_but_never_the_encoder(fv):
    model = TemporalDecoderVAE.from_frame_vae(fv, finetune_spatial=True)
    params = {id(p) for p in model.trainable_parameters()}
    assert {id(p) for p in model.base.vae.decoder.parameters()} <= params
    assert not {id(p) for p in model.base.vae.encoder.parameters()} & params
    _loss(model).backward()
    assert all(p.grad is None for p in model.base.vae.encoder.parameters())
    assert all(p.grad is None for p in model.base.vae.quant_conv.parameters())
    assert model.base.vae.decoder.conv_in.weight.grad is not None
    assert model.last_layer() is model.base.vae.decoder.conv_out.weight
    model.finetune_spatial = False
    assert not model.base.vae.decoder.conv_in.weight.requires_grad


def test_last_layer_is_differentiable_for_the_adaptive_weight(fv, model):
    """With the 2-D decoder frozen, conv_out has no gradient: last_layer is the nearest trainable layer."""
    assert not model.base.vae.decoder.conv_out.weight.requires_grad
    w = model.last_layer()
    assert w.requires_grad and any(w is p for p in model.trainable_parameters())
    (g,) = torch.autograd.grad(_loss(model), w)
    assert g.abs().sum() > 0


def test_the_frame_vae_is_copied_not_changed(fv, model):
    perturb(model)
    model.finetune_spatial = True
    with torch.no_grad():
        model.base.vae.decoder.conv_out.weight.add_(1.0)
    assert_decodes_like(TemporalDecoderVAE.from_frame_vae(fv), fv, latents())
    assert not fv.vae.decoder.conv_out.weight.requires_grad


# ----------------------------------------------------------------------------- files
def test_save_load_round_trip(fv, tmp_path):
    model = TemporalDecoderVAE.from_frame_vae(fv, attention="all", spatial_kernel=3)
    perturb(model)
    model.finetune_spatial = True
    with torch.no_grad():  # a fine-tuned 2-D decoder travels in vae/
        model.base.vae.decoder.conv_in.weight.mul_(1.1)
    model.save_pretrained(tmp_path / "tdec")
    config = json.loads((tmp_path / "tdec" / "config.json").read_text())
    assert config["_class_name"] == "TemporalDecoderVAE" and config["base"] == "vae"
    assert (tmp_path / "tdec" / "temporal.safetensors").is_file()

    loaded = TemporalDecoderVAE.from_pretrained(tmp_path / "tdec")
    z, x = latents(), video()
    assert torch.equal(loaded.decode(z), model.decode(z))
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert (loaded.scaling_factor, loaded.shift_factor) == (0.7, 0.1)
    assert loaded.finetune_spatial and loaded.options == model.options
    # vae/ alone is the frame VAE (with the fine-tuned 2-D decoder), same latents
    alone = FrameVAE.from_pretrained(tmp_path / "tdec" / "vae", scaling_factor=0.7, shift_factor=0.1)
    assert torch.equal(alone.encode(x), fv.encode(x))
    assert torch.equal(alone.vae.decoder.conv_in.weight, model.base.vae.decoder.conv_in.weight)
    frozen = TemporalDecoderVAE.from_pretrained(tmp_path / "tdec", finetune_spatial=False)
    assert [id(p) for p in frozen.trainable_parameters()] == [id(p) for p in frozen.temporal.parameters()]


def test_from_pretrained_rejects_a_plain_frame_vae(fv, tmp_path):
    fv.save_pretrained(tmp_path / "fv")
    with pytest.raises(FileNotFoundError, match="from_frame_vae"):
        TemporalDecoderVAE.from_pretrained(tmp_path / "fv")


def test_state_dict_round_trip(fv, model):
    perturb(model)
    other = TemporalDecoderVAE.from_frame_vae(tiny_frame_vae(seed=9))
    z = latents()
    assert not torch.equal(other.decode(z), model.decode(z))
    other.load_state_dict(model.state_dict())
    assert torch.equal(other.decode(z), model.decode(z))
    assert all(k.startswith(("base.vae.", "temporal.")) for k in model.state_dict())


def test_deterministic(fv, model):
    perturb(model)
    z = latents()
    assert torch.equal(model.decode(z), model.decode(z))


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("options, message", [
    ({"where": "everywhere"}, "where must be"),
    ({"attention": "up"}, "attention must be"),
    ({"where": "up", "attention": True}, "mid block"),
    ({"conv": False, "attention": False}, "no temporal layer"),
    ({"temporal_kernel": 2}, "odd"),
    ({"alpha_init": 1.0}, "alpha_init"),
])
def test_bad_options_are_clear_errors(fv, options, message):
    with pytest.raises(ValueError, match=message):
        TemporalDecoderVAE.from_frame_vae(fv, **options)


def test_sites_follow_the_options(fv):
    default = TemporalDecoderVAE.from_frame_vae(fv)
    # mid: 2 resnets (conv + attention each); 2 up blocks of num_res_blocks + 1 = 2 resnets (conv only)
    assert sorted(default.temporal) == ["mid_0", "mid_1", "up_0_0", "up_0_1", "up_1_0", "up_1_1"]
    assert [type(m.branch).__name__ for m in default.temporal["mid_0"]] == ["TemporalConvBlock",
                                                                              "TemporalSelfAttention"]
    assert [type(m.branch).__name__ for m in default.temporal["up_1_1"]] == ["TemporalConvBlock"]
    assert default.alphas() and all(abs(a - 0.5) < 1e-6 for a in default.alphas().values())
    assert sorted(TemporalDecoderVAE.from_frame_vae(fv, where="mid", conv=False).temporal) == ["mid_0", "mid_1"]


def test_trains_under_bf16_autocast(fv, model):
    perturb(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())
