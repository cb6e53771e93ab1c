"""The causal 3-D VAE (W.A.L.T / MAGVIT-v2): the 1 + 4k frame rule, exact causality (frame 0 alone
is latent frame 0), chunked == unchunked with a carried conv cache, tiled ≈ untiled, per-channel
latent normalization, gradients in training mode, and save/load. Tiny fp32 models, fixed seeds."""
from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from moviola.autoencoders import build_autoencoder
from moviola.autoencoders.causal_vae import (CausalConv3d, CausalVAE, FrameGroupNorm, blend_weights, gaussian_kl,
                                             tile_starts)

TOL = 1e-5


def tiny(**kw) -> CausalVAE:
    """8× space, 4× time, 4 latent channels: a 16×16 frame is a 2×2 latent."""
    torch.manual_seed(0)
    args = dict(base_channels=8, channel_mults=(1, 1, 2, 2), num_res_blocks=1, latent_channels=4, norm_groups=4)
    args.update(kw)
    return CausalVAE(**args).eval()


def tiny_s4(**kw) -> CausalVAE:
    """4× space, 4× time: cheaper at the larger frames the tiling tests need."""
    return tiny(channel_mults=(1, 1, 2), temporal_downsample=(True, True), spatial_downsample=(True, True), **kw)


def video(t: int, b: int = 2, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    return tiny()


# ------------------------------------------------------------------ shapes and the frame rule

def test_factors_and_latent_shape(vae):
    assert (vae.spatial_factor, vae.temporal_factor, vae.latent_channels) == (8, 4, 4)
    assert vae.latent_shape(1, 16, 16) == (4, 1, 2, 2)  # an image is a one-frame video
    assert vae.latent_shape(17, 128, 128) == (4, 5, 16, 16)  # W.A.L.T's 17×128×128 -> 5×16×16
    assert vae.latent_shape(13, 16, 32) == (4, 4, 2, 4)
    with pytest.raises(ValueError, match="spatial factor"):
        vae.latent_shape(5, 12, 16)
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        vae.latent_shape(16, 16, 16)


@pytest.mark.parametrize("t", [1, 5, 9, 13])
def test_encode_decode_shapes(vae, t):
    z = vae.encode(video(t))
    assert z.shape == (2, 4, 1 + (t - 1) // 4, 2, 2)
    assert vae.decode(z).shape == (2, 3, t, 16, 16)


@pytest.mark.parametrize("t,nearest", [(2, "1 or 5"), (4, "1 or 5"), (6, "5 or 9"), (16, "13 or 17")])
def test_frame_count_rule_is_refused_with_the_nearest_counts(vae, t, nearest):
    with pytest.raises(ValueError, match=r"1 \+ 4·k frames") as err:
        vae.encode(video(t))
    assert f"got {t} frames: use {nearest} frames" in str(err.value)
    assert "pad=True" in str(err.value)
    with pytest.raises(ValueError, match="at least 1 frame"):
        vae.encode(video(1)[:, :, :0])


def test_pad_repeats_the_last_frame(vae):
    x = video(7)
    padded = torch.cat([x, x[:, :, -1:], x[:, :, -1:]], dim=2)  # 9 frames
    z = vae.encode(x, pad=True)
    assert z.shape[2] == 3
    assert maxdiff(z, vae.encode(padded)) < TOL


def test_bad_inputs_are_refused(vae):
    with pytest.raises(ValueError, match="expected a video"):
        vae.encode(torch.zeros(1, 1, 5, 16, 16))
    with pytest.raises(ValueError, match="expected a latent"):
        vae.decode(torch.zeros(1, 3, 2, 2, 2))
    with pytest.raises(ValueError, match="norm_groups"):
        CausalVAE(base_channels=6, channel_mults=(1, 2), temporal_downsample=(True,), spatial_downsample=(True,),
                  norm_groups=4)
    with pytest.raises(ValueError, match="one entry per level"):
        CausalVAE(base_channels=8, channel_mults=(1, 2), temporal_downsample=(True, True), norm_groups=4)


# ------------------------------------------------------------------ causality

@pytest.mark.parametrize("t", [5, 9, 13])
def test_encoder_is_causal(vae, t):
    x = video(t)
    z = vae.encode(x)
    assert maxdiff(vae.encode(x[:, :, :1]), z[:, :, :1]) < TOL  # an image encodes like frame 0 of a video
    for k in range(1, (t - 1) // 4 + 1):  # every prefix of 1 + 4k frames gives the first 1 + k latents
        assert maxdiff(vae.encode(x[:, :, :1 + 4 * k]), z[:, :, :1 + k]) < TOL
    # changing the last frame moves the last latent frame only
    y = x.clone()
    y[:, :, -1] = -y[:, :, -1]
    zy = vae.encode(y)
    assert maxdiff(zy[:, :, :-1], z[:, :, :-1]) < TOL
    assert maxdiff(zy[:, :, -1:], z[:, :, -1:]) > 1e-3


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_decoder_is_causal(vae, k):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 5, 2, 2, generator=g)
    full = vae.decode(z)
    assert maxdiff(vae.decode(z[:, :, :k]), full[:, :, :1 + 4 * (k - 1)]) < TOL


def test_causal_conv_pads_with_copies_of_frame_zero():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, kernel=3, stride=(2, 1, 1))
    x = torch.randn(1, 2, 5, 4, 4)
    padded = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)  # (1, 2, 7, 4, 4): two copies in front, none after
    ref = nn.functional.conv3d(padded, conv.conv.weight, conv.conv.bias, stride=(2, 1, 1), padding=(0, 1, 1))
    assert ref.shape[2] == 3 and maxdiff(conv(x), ref) < 1e-6


def test_a_still_video_encodes_to_identical_latent_frames(vae):
    """Replicated (not zero) padding: a still video looks the same to every window, so every latent
    frame equals the image latent, and the decoded video is still too."""
    x = video(1).expand(-1, -1, 9, -1, -1)
    z = vae.encode(x)
    assert maxdiff(z, z[:, :, :1].expand_as(z)) < TOL
    y = vae.decode(z)
    assert maxdiff(y, y[:, :, :1].expand_as(y)) < TOL


class _VideoGroupNorm(nn.Module):
    """The usual nn.GroupNorm on a 5-D tensor: statistics over (C/G, T, H, W)."""

    def __init__(self, norm: FrameGroupNorm):
        super().__init__()
        self.gn = nn.GroupNorm(norm.groups, norm.weight.numel(), eps=norm.eps)

    def forward(self, x):
        return self.gn(x)


def test_causality_test_can_fail_with_groupnorm_over_time():
    """The checks above are not vacuous: GroupNorm pooling over time breaks frame-0 independence."""
    m = tiny()
    for module in list(m.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, FrameGroupNorm):
                setattr(module, name, _VideoGroupNorm(child))
    x = video(9)
    assert maxdiff(m.encode(x[:, :, :1]), m.encode(x)[:, :, :1]) > 1e-3


# ------------------------------------------------------------------ chunking with a carried cache

@pytest.mark.parametrize("t,chunks", [(5, 4), (9, 4), (13, 4), (13, 8), (17, 4), (17, 12), (17, 16),
                                      (9, [1, 4, 4]), (13, [1, 12]), (13, [5, 4, 4]), (17, [9, 8]), (13, 32)])
def test_chunked_encode_equals_unchunked(vae, t, chunks):
    x = video(t)
    ref = vae.encode(x)
    assert maxdiff(vae.encode(x, chunk_frames=chunks), ref) < TOL
    # sampling draws its noise once for the whole latent, so a seeded sample is chunk-independent too
    s1 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    s2 = vae.encode(x, sample=True, generator=torch.Generator().manual_seed(3), chunk_frames=chunks)
    assert maxdiff(s1, s2) < TOL and maxdiff(s1, ref) > 1e-3


@pytest.mark.parametrize("t,chunks", [(2, 1), (3, 1), (4, 1), (5, 2), (4, 3), (5, [1, 2, 2]), (4, [3, 1])])
def test_chunked_decode_equals_unchunked(vae, t, chunks):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 4, t, 2, 2, generator=g)
    assert maxdiff(vae.decode(z, chunk_latents=chunks), vae.decode(z)) < TOL


def test_chunking_without_the_cache_would_differ(vae):
    """Chunks decoded independently (no carried frames) do not match: the cache is what makes it exact."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 4, 4, 2, 2, generator=g)
    full = vae.decode(z)
    with torch.no_grad():
        second = vae.decode_raw(z[:, :, 2:])[:, :, 1:]  # a fresh run treats latent 2 as a first frame
    assert maxdiff(second, full[:, :, -second.shape[2]:]) > 1e-3


def test_instance_chunk_default_applies_to_both_directions():
    m = tiny(chunk_frames=4)
    x = video(13)
    z = m.encode(x)
    assert maxdiff(z, tiny().encode(x)) < TOL and maxdiff(m.decode(z), tiny().decode(z)) < TOL


@pytest.mark.parametrize("chunks", [3, 0, [2, 3, 4], [1, 4], [1, 3, 5]])
def test_bad_encode_chunks_are_refused(vae, chunks):
    with pytest.raises(ValueError, match="chunk_frames"):
        vae.encode(video(9), chunk_frames=chunks)


# ------------------------------------------------------------------ spatial tiling

@pytest.mark.parametrize("size,tile,overlap", [(16, 8, 2), (16, 8, 4), (13, 8, 4), (10, 8, 1), (40, 16, 8),
                                               (9, 8, 0), (29, 8, 3), (8, 8, 2), (5, 8, 2)])
def test_blend_weights_sum_to_one(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size
    assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))  # at least the asked overlap
    w = blend_weights(size, starts, tile)
    assert w.shape == (len(starts), size)
    assert torch.allclose(w.sum(0), torch.ones(size), atol=1e-6)
    assert (w >= 0).all() and (w <= 1).all()
    for i, s in enumerate(starts):  # zero outside its tile, positive inside
        inside = torch.zeros(size, dtype=torch.bool)
        inside[s:s + tile] = True
        assert (w[i][~inside] == 0).all() and (w[i][inside] > 0).all()


def test_blend_weights_are_linear_ramps():
    w = blend_weights(12, [0, 4], 8)  # overlap 4 on [4, 8)
    assert torch.allclose(w[1, 4:8], torch.tensor([0.2, 0.4, 0.6, 0.8]))
    assert torch.allclose(w[0, 4:8], torch.tensor([0.8, 0.6, 0.4, 0.2]))
    assert (w[0, :4] == 1).all() and (w[1, 8:] == 1).all()


def periodic(channels: int, frames: int, n: int, period: int) -> torch.Tensor:
    """A smooth (1, channels, frames, n, n) pattern. Its period divides the tile stride, so every tile
    sees the same per-frame GroupNorm statistics as the whole frame: what remains of tiled - untiled
    is the tiles' border padding, which is what the overlap blending is there to hide."""
    yy, xx = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")
    w = 2 * math.pi / period
    chans = [0.8 * torch.sin(w * xx + c) * torch.cos(w * yy - c) for c in range(channels)]
    fade = torch.linspace(0.5, 1.0, frames).view(1, 1, frames, 1, 1)  # a little motion in time
    return (torch.stack(chans)[None, :, None] * fade).contiguous()  # (1, channels, frames, n, n)


def test_tiled_decode_is_close_to_untiled():
    m = tiny_s4()
    z = periodic(4, 2, 32, period=8)  # a 32×32 latent -> 5 frames of 128×128; 3 periods per tile
    ref = m.decode(z)
    tiled = m.decode(z, tile_size=96, tile_overlap=48)
    assert tiled.shape == ref.shape == (1, 3, 5, 128, 128)
    err = (tiled - ref).abs()
    seams = (m.decode(z, tile_size=64, tile_overlap=0) - ref).abs()  # butt-joined tiles, no blending
    # an untrained decoder's per-frame GroupNorm statistics differ a little per tile, hence the margins
    assert err.mean() < 0.1 * ref.std() and err.flatten().quantile(0.99) < 0.6 * ref.std(), (err.mean(), ref.std())
    assert err.max() < 0.3 * seams.max(), (err.max(), seams.max())
    # a tile that covers the whole frame is the untiled path
    assert maxdiff(m.decode(z, tile_size=128, tile_overlap=32), ref) < TOL


def test_tiled_encode_is_close_to_untiled():
    m = tiny_s4()
    x = periodic(3, 5, 128, period=32)  # 3 periods per tile
    ref = m.encode(x)
    tiled = m.encode(x, tile_size=96, tile_overlap=48, chunk_frames=4)
    assert tiled.shape == ref.shape == (1, 4, 2, 32, 32)
    err = (tiled - ref).abs()
    seams = (m.encode(x, tile_size=64, tile_overlap=0) - ref).abs()
    assert err.mean() < 0.1 * ref.std() and err.flatten().quantile(0.99) < 0.6 * ref.std(), (err.mean(), ref.std())
    assert err.max() < 0.3 * seams.max(), (err.max(), seams.max())
    with pytest.raises(ValueError, match="multiples of the spatial factor"):
        m.encode(x, tile_size=30, tile_overlap=8)


# ------------------------------------------------------------------ latent normalization

def test_measured_stats_normalize_latents_and_round_trip():
    m = tiny()
    batches = [video(5, seed=s) * 0.5 + 0.2 * s for s in range(3)]
    mean, std = m.measure_latent_stats(batches)
    assert torch.allclose(m.latent_shift, mean) and torch.allclose(m.latent_scale, 1 / std)
    z = torch.cat([m.encode(b) for b in batches], dim=0).transpose(0, 1).reshape(4, -1)  # (c, N)
    assert z.mean(1).abs().max() < 1e-4
    assert (z.std(1, unbiased=False) - 1).abs().max() < 1e-4
    # decode undoes exactly the normalization encode applied
    x = batches[0]
    with torch.no_grad():
        raw = m.decode_raw(m.encode_dist(x)[0])
    assert maxdiff(m.decode(m.encode(x)), raw) < TOL
    assert maxdiff(m.encode(x), m.encode_dist(x)[0].detach()) > 1e-2  # the stats really are not identity
    state = m.state_dict()
    assert torch.equal(state["latent_shift"], mean) and torch.equal(state["latent_scale"], m.latent_scale)


# ------------------------------------------------------------------ training

def test_gradients_flow_in_training_mode():
    m = tiny().train()
    x = video(5, b=1)
    out = m(x, generator=torch.Generator().manual_seed(0))
    assert out.reconstruction.shape == x.shape and out.mean.shape == out.logvar.shape == (1, 4, 2, 2, 2)
    loss = (out.reconstruction - x).abs().mean() + 1e-3 * gaussian_kl(out.mean, out.logvar).mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert m.last_layer() is m.decoder.conv_out.conv.weight and m.last_layer().grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    x = video(5, b=1)
    grads = []
    for ckpt in (False, True):
        m = tiny(gradient_checkpointing=ckpt).train()
        m(x, sample=False).reconstruction.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert maxdiff(grads[0], grads[1]) < 1e-6


def test_gaussian_kl():
    mean, logvar = torch.zeros(2, 4, 1, 2, 2), torch.zeros(2, 4, 1, 2, 2)
    assert torch.equal(gaussian_kl(mean, logvar), torch.zeros(2))
    assert torch.allclose(gaussian_kl(mean + 1, logvar), torch.full((2,), 0.5 * 16))


# ------------------------------------------------------------------ save / load

def test_save_load_round_trip(tmp_path):
    m = tiny()
    m.measure_latent_stats([video(5)])
    m.save_pretrained(tmp_path / "vae")
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "CausalVAE" and cfg["latent_channels"] == 4
    loaded = CausalVAE.from_pretrained(tmp_path / "vae")
    x = video(9, seed=5)
    z = m.encode(x)
    assert torch.equal(loaded.encode(x), z) and torch.equal(loaded.decode(z), m.decode(z))
    rebuilt = CausalVAE.from_config(m.to_config())
    rebuilt.load_state_dict(m.state_dict())
    assert torch.equal(rebuilt.encode(x), z)
    m.chunk_frames = 8
    assert CausalVAE.from_config(m.to_config()).chunk_frames == 8  # run-time settings are saved as they are
    with pytest.raises(ValueError, match="unknown CausalVAE config keys.*'base_chanels'"):
        CausalVAE.from_config({**m.to_config(), "base_chanels": 8})
    built = build_autoencoder(SimpleNamespace(kind="causal_vae", path=str(tmp_path / "vae"), chunk_frames=4))
    assert isinstance(built, CausalVAE) and maxdiff(built.encode(x), z) < TOL


def test_seeded_construction_is_deterministic():
    x = video(5)
    assert torch.equal(tiny().encode(x), tiny().encode(x))


# ------------------------------------------------------------------ other factors

def test_temporal_factor_one_takes_any_frame_count():
    m = tiny(temporal_downsample=(False, False, False))
    assert m.temporal_factor == 1 and m.latent_shape(6, 16, 16) == (4, 6, 2, 2)
    x = video(6)
    z = m.encode(x)
    assert z.shape == (2, 4, 6, 2, 2) and m.decode(z).shape == x.shape
    assert maxdiff(m.encode(x[:, :, :1]), z[:, :, :1]) < TOL
    assert maxdiff(m.encode(x, chunk_frames=2), z) < TOL  # chunks of 3, 2, 1 frames
    assert maxdiff(m.decode(z, chunk_latents=[1, 3, 2]), m.decode(z)) < TOL


def test_spatial_factor_four():
    m = tiny_s4()
    assert (m.spatial_factor, m.temporal_factor) == (4, 4)
    x = video(9)
    z = m.encode(x)
    assert z.shape == (2, 4, 3, 4, 4) and m.decode(z).shape == x.shape
    assert maxdiff(m.encode(x, chunk_frames=[1, 8]), z) < TOL
    assert maxdiff(m.encode(x[:, :, :1]), z[:, :, :1]) < TOL


def test_temporal_factor_two_at_the_first_level():
    m = tiny(temporal_downsample=(True, False, False))
    assert m.temporal_factor == 2 and m.latent_shape(7, 16, 16) == (4, 4, 2, 2)
    x = video(7)
    z = m.encode(x)
    assert maxdiff(m.encode(x, chunk_frames=2), z) < TOL and m.decode(z).shape == x.shape
