"""VideoCrafter (models/videocrafter/, nn/temporal.py): the temporal layers against diffusers' modules with the
same weights; Shaw relative positions against a naive loop; the causal mask; the untrained model is its spatial
U-Net frame by frame; image frames bypass the temporal layers; the frame rate conditions; the tiny model's
contract (shape, checkpoint round trip, determinism); the temporal parameter group; the config's errors."""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from moviola import Conditioning
from moviola.config import ConditionsConfig, ConfigError, VideoCrafterConfig, load_config, to_dict
from moviola.io.checkpoint import save_checkpoint
from moviola.models.loading import load_model
from moviola.models.videocrafter import VideoCrafter
from moviola.models.videocrafter.blocks import VideoConv, VideoTransformer
from moviola.nn.temporal import TemporalAttention, TemporalConvLayer, TemporalTransformer

torch.set_num_threads(1)
B, C, H = 2, 3, 8
TEXT = 6
SMALL = dict(block_out_channels=(16, 32), layers_per_block=1, num_heads=2, norm_num_groups=8)


def randomize(module: torch.nn.Module, scale: float = 0.2, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def vc(conditions: ConditionsConfig = ConditionsConfig(text_channels=TEXT), seed: int = 0, **model) -> VideoCrafter:
    torch.manual_seed(seed)
    return VideoCrafter(VideoCrafterConfig(**{**SMALL, **model}), conditions, C)


def perturb(model: VideoCrafter, which: str = "all", scale: float = 0.1, seed: int = 1) -> VideoCrafter:
    """Move weights off their initialization ('spatial', 'temporal' or 'all')."""
    g = torch.Generator().manual_seed(seed)
    temporal = {id(p) for p in model.parameter_groups("temporal")}
    with torch.no_grad():
        for p in model.parameters():
            if which == "all" or (id(p) in temporal) == (which == "temporal"):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def spatial_part(model: VideoCrafter) -> VideoCrafter:
    """The same network with every temporal layer replaced by the identity (the spatial U-Net, embeddings kept)."""
    image = copy.deepcopy(model)
    for m in image.modules():
        if isinstance(m, (VideoConv, VideoTransformer)):
            m.forward = lambda h, video: h
    return image.eval()


def latents(T=4, seed=2):
    return torch.randn(B, C, T, H, H, generator=torch.Generator().manual_seed(seed))


def text_cond(seed=3, **kw):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return Conditioning(text=torch.randn(B, 5, TEXT, generator=g), text_mask=mask, **kw)


def frame_batch(T=5, channels=16, seed=4):
    return torch.randn(B * T, channels, 3, 2, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- layers vs diffusers
def test_the_temporal_conv_layer_is_diffusers_temporal_conv_layer():
    from diffusers.models.resnet import TemporalConvLayer as Reference

    ref = randomize(Reference(16, 16, dropout=0.1, norm_num_groups=4))
    ours = TemporalConvLayer(16, groups=4)
    assert torch.equal(ours.conv4[-1].weight, torch.zeros_like(ours.conv4[-1].weight))  # starts as the identity
    ours.load_state_dict(ref.state_dict(), strict=True)  # diffusers' names, nothing more nor less
    x = frame_batch()
    torch.testing.assert_close(ours.eval()(x, 5), ref(x, num_frames=5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("heads, head_dim, layers", [(2, 8, 1), (8, 4, 2)], ids=["level", "transformer_in"])
def test_the_temporal_transformer_is_diffusers_transformer_temporal_model(heads, head_dim, layers):
    """Double self-attention (ModelScope), with heads·head_dim equal to the channels or not (transformer_in)."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    ref = randomize(TransformerTemporalModel(heads, head_dim, in_channels=16, num_layers=layers, norm_num_groups=4,
                                             cross_attention_dim=24))
    ours = TemporalTransformer(16, 4, heads, head_dim, num_layers=layers)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = frame_batch()
    torch.testing.assert_close(ours.eval()(x, 5), ref(x, num_frames=5).sample, rtol=0, atol=1e-5)


def test_the_text_cross_attention_is_diffusers_cross_attention_per_pixel():
    """only_self_att=False: attn2 attends to the clip's text from every pixel's frame sequence."""
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    ref = randomize(TransformerTemporalModel(2, 8, in_channels=16, norm_num_groups=4, cross_attention_dim=TEXT,
                                             double_self_attention=False))
    ours = TemporalTransformer(16, 4, 2, 8, context_dim=TEXT)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = frame_batch()
    text = torch.randn(B, 5, TEXT, generator=torch.Generator().manual_seed(5))
    per_pixel = text.repeat_interleave(3 * 2, dim=0)  # diffusers wants (B·H·W, L, D): pixels of clip b first
    want = ref(x, encoder_hidden_states=per_pixel, num_frames=5).sample
    torch.testing.assert_close(ours.eval()(x, 5, context=text), want, rtol=0, atol=1e-5)
    keep = torch.ones(B, 5, dtype=torch.bool)
    keep[1, 2:] = False  # padding masked = the real tokens alone
    masked = ours(x, 5, context=text, context_mask=keep)
    short = ours(x.view(B, 5, 16, 3, 2)[1], 5, context=text[1:, :2])
    torch.testing.assert_close(masked.view(B, 5, 16, 3, 2)[1], short, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------- positions, causality
def naive_relative_attention(attn: TemporalAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Shaw et al. with loops: e_ij = q_i·(k_j + a^K[clip(j − i)]) / √d, out_i = Σ_j softmax_j(e)_ij (v_j + a^V[...])."""
    N, L, _ = x.shape
    h, d = attn.heads, attn.head_dim
    m = attn.relative_position_k.max_distance
    tk, tv = attn.relative_position_k.embeddings_table, attn.relative_position_v.embeddings_table
    q, k, v = (w(x).view(N, L, h, d) for w in (attn.to_q, attn.to_k, attn.to_v))
    out = torch.zeros(N, L, h, d)
    for n in range(N):
        for head in range(h):
            for i in range(L):
                js = [j for j in range(L) if not causal or j <= i]
                idx = [min(max(j - i, -m), m) + m for j in js]
                e = torch.stack([q[n, i, head] @ (k[n, j, head] + tk[r]) / math.sqrt(d) for j, r in zip(js, idx)])
                p = e.softmax(0)
                out[n, i, head] = sum(p[a] * (v[n, j, head] + tv[r]) for a, (j, r) in enumerate(zip(js, idx)))
    return attn.to_out[0](out.reshape(N, L, h * d))


@pytest.mark.parametrize("causal", [False, True])
def test_relative_positions_are_shaw_clipped_at_the_temporal_length(causal):
    attn = randomize(TemporalAttention(8, 2, 4, relative_length=2), scale=0.5)
    assert attn.relative_position_k.embeddings_table.shape == (5, 4)  # offsets −2..2, one row each
    x = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(6))  # 6 frames: offsets up to ±5 are clipped
    mask = torch.ones(6, 6, dtype=torch.bool).tril() if causal else None
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mask=mask), naive_relative_attention(attn, x, causal), rtol=0, atol=1e-5)


def test_the_relative_tables_change_the_output_and_shift_with_the_frames():
    tt = randomize(TemporalTransformer(16, 4, 2, 8, relative_position=True, temporal_length=3))
    plain = TemporalTransformer(16, 4, 2, 8)
    plain.load_state_dict({k: v for k, v in tt.state_dict().items() if "relative_position" not in k}, strict=True)
    x = frame_batch()
    with torch.no_grad():
        assert (tt(x, 5) - plain.eval()(x, 5)).abs().max() > 1e-3
        names = [n for n, _ in tt.named_parameters() if "relative_position" in n]
    assert "transformer_blocks.0.attn1.relative_position_k.embeddings_table" in names
    assert "transformer_blocks.0.attn2.relative_position_v.embeddings_table" in names  # both self-attentions


@pytest.mark.parametrize("relative", [False, True])
def test_a_causal_temporal_attention_never_looks_ahead(relative):
    """Replacing frame 3 leaves the attention stack's outputs at frames 0..2 unchanged (the GroupNorm before it
    takes statistics over the whole clip, as VideoCrafter's does, so the stack is tested past the norm)."""
    tt = randomize(TemporalTransformer(16, 4, 2, 8, num_layers=2, relative_position=relative, causal=True))
    seq = torch.randn(4, 5, 16, generator=torch.Generator().manual_seed(7))  # (pixels, T, heads·head_dim)
    moved = seq.clone()
    moved[:, 3] = torch.randn(4, 16, generator=torch.Generator().manual_seed(8))

    def stack(h):
        for block in tt.transformer_blocks:
            h = block(h, tt.causal_mask(5))
        return h

    with torch.no_grad():
        a, b = stack(seq), stack(moved)
    assert torch.equal(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3
    tt.causal = False
    with torch.no_grad():
        assert (stack(seq)[:, :3] - stack(moved)[:, :3]).abs().max() > 1e-3  # without the mask it does look


# ---------------------------------------------------------------------------------------- the model
def test_the_untrained_model_is_its_spatial_unet_frame_by_frame():
    conditions = ConditionsConfig(text_channels=TEXT, num_classes=5, fps=True)
    model = perturb(vc(conditions, relative_position=True, temporal_self_attention_only=False), "spatial")
    x, t = latents(), torch.tensor([[5, 100, 400, 900], [999, 0, 30, 500]])
    cond = text_cond(labels=torch.tensor([1, -1]), fps=torch.tensor([8.0, 24.0]))
    out = model(x, t, cond)
    torch.testing.assert_close(out, spatial_part(model)(x, t, cond), rtol=0, atol=1e-6)
    perturb(model, "temporal")
    assert (model(x, t, cond) - out).abs().max() > 1e-3  # ...and the temporal layers are live


@pytest.mark.parametrize("switches", [dict(), dict(relative_position=True, causal_attention=True, temporal_conv=False),
                                      dict(temporal_self_attention_only=False, addition_attention=False)],
                         ids=["vc2", "vc1_causal", "text"])
def test_image_frames_of_a_joint_batch_bypass_every_temporal_layer(switches):
    model = perturb(vc(**switches))
    x, t, cond = latents(T=6), torch.tensor([50, 700]), text_cond()
    out = model(x, t, cond, num_images=2)
    torch.testing.assert_close(out[:, :, 4:], spatial_part(model)(x, t, cond)[:, :, 4:], rtol=0, atol=1e-6)
    y = x.clone()
    y[:, :, 5] = torch.randn_like(y[:, :, 5])  # another second image
    assert torch.equal(model(y, t, cond, num_images=2)[:, :, :5], out[:, :, :5])
    torch.testing.assert_close(out[:, :, :4], model(x[:, :, :4], t, cond), rtol=0, atol=1e-6)  # the video alone
    assert (model(x, t, cond)[:, :, :4] - out[:, :, :4]).abs().max() > 1e-4  # as video, they mix


def test_the_frame_rate_conditions_the_model_and_a_missing_one_is_named():
    model = perturb(vc(ConditionsConfig(text_channels=TEXT, fps=True)))
    assert "fps" in model.accepts and model.fps_embedding.linear_1.in_features == 16
    x, t = latents(), torch.tensor([50, 700])
    out = model(x, t, text_cond(fps=torch.tensor([8, 8])))
    assert (model(x, t, text_cond(fps=torch.tensor([8, 24]))) - out)[0].abs().max() == 0  # per clip
    assert (model(x, t, text_cond(fps=torch.tensor([8, 24]))) - out)[1].abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"frame rate \(conditions.fps\).*Conditioning\(fps=...\)"):
        model(x, t, text_cond())
    with pytest.raises(ValueError, match="fps must be a real tensor of shape"):
        model(x, t, text_cond(fps=torch.tensor([8, 8, 8])))
    with pytest.raises(ValueError, match="does not accept conditioning field.*fps"):
        vc()(x, t, text_cond(fps=torch.tensor([8, 8])))


def test_parameter_groups_temporal_is_exactly_the_temporal_layers():
    model = vc(relative_position=True)
    layers = [m for m in model.modules() if isinstance(m, (VideoConv, VideoTransformer))]
    assert model.unet.transformer_in in layers
    assert len(layers) == 1 + (2 + 2 + 4) + (2 + 1 + 4)  # transformer_in; a conv per resnet; one per transformer
    temporal = {id(p) for m in layers for p in m.parameters()}
    assert {id(p) for p in model.parameter_groups("temporal")} == temporal
    assert {id(p) for p in model.parameter_groups("spatial")} == {id(p) for p in model.parameters()} - temporal
    names = {n for n, _ in model.named_parameters()}
    assert "unet.mid_block.temp_convs.1.conv4.3.weight" in names
    assert "unet.up_blocks.1.temp_attentions.1.transformer_blocks.0.ff.net.0.proj.weight" in names
    # the frame-rate embedding is motion: a temporal stage (from an image model, where it starts at zero) trains it
    rate = vc(ConditionsConfig(text_channels=TEXT, fps=True))
    fps = {id(p) for p in rate.fps_embedding.parameters()}
    assert fps and fps <= {id(p) for p in rate.parameter_groups("temporal")}
    assert not fps & {id(p) for p in rate.parameter_groups("spatial")}
    no_conv = vc(temporal_conv=False, addition_attention=False)
    assert not any("temp_convs" in n or "transformer_in" in n for n, _ in no_conv.named_parameters())


def test_a_tiny_model_with_every_condition_round_trips_through_a_checkpoint(tmp_path):
    cfg = load_config(overrides=["model.family=videocrafter", "model.block_out_channels=[16,32]",
                                 "model.layers_per_block=1", "model.num_heads=2", "model.norm_num_groups=8",
                                 "model.relative_position=true", "model.temporal_length=2",
                                 "model.causal_attention=true", "model.temporal_self_attention_only=false",
                                 "model.learned_sigma=true", "data.size=8", "data.frames=4",
                                 "conditions.num_classes=5", f"conditions.text_channels={TEXT}",
                                 "conditions.context_frames=true", "conditions.fps=true"])
    torch.manual_seed(0)
    model = perturb(VideoCrafter.from_config(cfg.model, cfg.conditions, C))
    path = save_checkpoint(tmp_path / "checkpoints", 1, to_dict(cfg), model, model)
    loaded = load_model(path)
    x = latents()
    m = torch.zeros(B, 1, 4, 1, 1)
    m[:, :, 0] = 1
    cond = text_cond(labels=torch.tensor([1, -1]), context=x * m, context_mask=m, fps=torch.tensor([8.0, 3.0]))
    t = torch.tensor([10, 20])
    out = model(x, t, cond)
    assert out.shape == (B, 2 * C, 4, H, H)
    assert torch.equal(loaded(x, t, cond), out) and torch.equal(model(x, t, cond), out)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(cfg.model)
    assert loaded.accepts == {"labels", "text", "text_mask", "context", "context_mask", "fps"}
    assert model.unet.conv_in.in_channels == 2 * C + 1  # x_t, m ∘ z, m
    torch.testing.assert_close(model(x, torch.tensor([[10] * 4, [20] * 4]), cond), out, rtol=0, atol=1e-6)
    for field, value in (("context", latents(seed=9) * m), ("labels", torch.tensor([2, 2]))):
        assert not torch.equal(model(x, t, dataclasses.replace(cond, **{field: value})), out), field


@pytest.mark.parametrize("switches", [dict(), dict(relative_position=True, causal_attention=True),
                                      dict(temporal_self_attention_only=False, temporal_conv=False)],
                         ids=["vc2", "vc1_causal", "text"])
def test_every_temporal_switch_trains(switches):
    model = vc(**switches).train()
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(B, C, 3, H, H, generator=g), torch.randn(B, C, 3, H, H, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = (model(x, torch.tensor([10, 600]), text_cond()) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is not None for p in model.parameter_groups("temporal"))


# ---------------------------------------------------------------------------------------- config errors
def run_cfg(*extra: str):
    return load_config(overrides=["model.family=videocrafter", "model.block_out_channels=[16,32]",
                                  "model.layers_per_block=1", "model.num_heads=2", "model.norm_num_groups=8",
                                  "data.size=32", "data.frames=4", *extra])


def test_the_named_size_is_videocrafters_unet():
    dims = VideoCrafterConfig(size="vc512").dims()
    assert dims.block_out_channels == (320, 640, 1280, 1280) and dims.layers_per_block == 2
    assert dims.attention_resolutions == (1, 2, 4) and dims.heads() == (5, 10, 20, 20)
    assert dims.use_linear_projection and VideoCrafterConfig(size="vc512").input_head_channels() == 64


@pytest.mark.parametrize("extra, words", [
    (["model.temporal_self_attention_only=false"], ["model.temporal_self_attention_only", "conditions.text_channels"]),
    (["model.temporal_length=0"], ["model.temporal_length"]),
    (["model.input_attention_heads=0"], ["model.input_attention_heads"]),
    (["model.size=vc1024"], ["model.size", "vc512"]),
    (["model.attention_resolutions=[1,8]"], ["model.attention_resolutions", "[8]", "[1, 2]"]),
    (["model.block_out_channels=[20,40]"], ["20", "model.norm_num_groups=8"]),
    (["model.head_channels=8"], ["model.num_heads", "model.head_channels"]),
    (["model.block_out_channels=[16,16,16,16,16,16,16]"], ["data.size=32", "64"]),
    (["model.temporal_head_channels=8"], ["temporal_head_channels", "video_ldm"]),
    (["conditions.low_res=true"], ["videocrafter", "low_res"]),
    (["model.fps_cond=true"], ["model.fps_cond", "conditions.fps"]),
])
def test_bad_configs_are_one_line_errors_before_any_compute(extra, words):
    with pytest.raises(ConfigError) as e:
        run_cfg(*extra)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
