"""Latte denoiser and the shared nn blocks: the denoiser contract, adaLN-Zero, per-frame timesteps,
attention structure (spatial within a frame, temporal across frames), embeddings against
independent reference formulas, named sizes and the official parameter count."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moviola import Conditioning
from moviola.config import ConditionsConfig, LatteConfig
from moviola.models.latte import Latte
from moviola.models.registry import build_model
from moviola.nn import Attention, sincos_2d, timestep_embedding
from moviola.nn.embeddings import sincos_1d, sincos_temporal

B, C, T, H, W = 2, 4, 4, 8, 8


def tiny(num_classes: int = 0, **kw) -> Latte:
    """A 32-wide, 2-block interleaved Latte; ``kw`` are LatteConfig fields."""
    args = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)
    args.update(kw)
    torch.manual_seed(0)
    return Latte(LatteConfig(**args), ConditionsConfig(num_classes=num_classes), in_channels=C).eval()


def perturb(model: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Add noise to every weight, so the zero-initialized gates and output layer are live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def make_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, W, generator=g)
    t = torch.tensor([10, 700])
    return x, t


def differs(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).abs().max().item() > tol


def freeze_temporal(model: Latte) -> Latte:
    """Zero every temporal block's adaLN output: its gates become 0, so the block is the identity."""
    with torch.no_grad():
        for blk in model.temporal_blocks:
            blk.adaLN_modulation[-1].weight.zero_()
            blk.adaLN_modulation[-1].bias.zero_()
    return model


# ------------------------------------------------------------------ the denoiser contract

def test_output_shape_matches_input():
    model = tiny()
    x, t = make_inputs()
    out = model(x, t)
    assert out.shape == x.shape


def test_learned_sigma_doubles_channels():
    model = perturb(tiny(learned_sigma=True))
    x, t = make_inputs()
    out = model(x, t)
    assert out.shape == (B, 2 * C, T, H, W)
    assert model.out_channels == 2 * C
    # both halves are real outputs, not padding
    assert out[:, :C].abs().max() > 0 and out[:, C:].abs().max() > 0


def test_output_is_exactly_zero_at_init_and_nonzero_after_perturbing():
    model = tiny(num_classes=5, learned_sigma=True)
    x, t = make_inputs()
    cond = Conditioning(labels=torch.tensor([0, 3]))
    out = model(x, t, cond)
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: exactly zero, not merely small
    perturb(model)
    out2 = model(x, t, cond)
    assert out2.abs().mean() > 1e-3


def test_adaln_zero_blocks_are_identity_at_init():
    model = tiny()
    x = torch.randn(B, T, 16, 32)
    c = torch.randn(B, T, 1, 32)
    for blk in (*model.spatial_blocks, *model.temporal_blocks):
        assert torch.equal(blk(x, c), x)


def test_safetensors_round_trip_gives_identical_outputs(tmp_path):
    model = perturb(tiny(num_classes=3, learned_sigma=True))
    x, t = make_inputs()
    cond = Conditioning(labels=torch.tensor([2, -1]))
    ref = model(x, t, cond)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    fresh = tiny(num_classes=3, learned_sigma=True)
    assert differs(fresh(x, t, cond), ref)  # a fresh model is different
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert torch.equal(fresh(x, t, cond), ref)


def test_forward_is_deterministic():
    model = perturb(tiny())
    x, t = make_inputs()
    assert torch.equal(model(x, t), model(x, t))


def test_build_model_from_config_uses_the_given_dims():
    cfg = LatteConfig(size="tiny", patch_size=4, hidden_size=48, depth=6, num_heads=3, learned_sigma=True)
    model = build_model(cfg, ConditionsConfig(num_classes=7), in_channels=3)
    assert isinstance(model, Latte)
    assert model.hidden_size == 48 and model.patch_size == 4 and model.in_channels == 3
    assert len(model.spatial_blocks) == 3 and len(model.temporal_blocks) == 3
    assert model.spatial_blocks[0].attn.num_heads == 3
    assert model.out_channels == 6 and model.accepts == {"labels"}


# ------------------------------------------------------------------ timesteps per frame

def test_per_frame_t_equal_to_broadcast_gives_identical_outputs():
    model = perturb(tiny())
    x, t = make_inputs()
    out_b = model(x, t)
    out_bt = model(x, t[:, None].expand(B, T).clone())
    assert torch.equal(out_b, out_bt)


def test_scalar_t_is_broadcast():
    model = perturb(tiny())
    x, _ = make_inputs()
    assert torch.equal(model(x, torch.tensor(300)), model(x, torch.tensor([300, 300])))


def test_per_frame_t_differences_change_outputs():
    model = perturb(tiny())
    x, t = make_inputs()
    ref = model(x, t)
    t_frames = t[:, None].expand(B, T).clone()
    t_frames[:, 2] = 999
    out = model(x, t_frames)
    assert differs(out[:, :, 2], ref[:, :, 2])
    # frames share information through temporal attention, so the others may change too; but
    # with the temporal blocks switched off, a frame's timestep affects that frame only
    freeze_temporal(model)
    ref = model(x, t)
    out = model(x, t_frames)
    assert differs(out[:, :, 2], ref[:, :, 2])
    for f in (0, 1, 3):
        assert torch.allclose(out[:, :, f], ref[:, :, f], atol=1e-6)


def test_wrong_timestep_shape_raises():
    model = tiny()
    x, _ = make_inputs()
    with pytest.raises(ValueError, match="timesteps"):
        model(x, torch.zeros(B, T + 1))


# ------------------------------------------------------------------ sizes

@pytest.mark.parametrize("frames,height,width", [(3, 8, 8), (7, 8, 16), (1, 12, 6), (4, 16, 8)])
def test_other_frame_counts_and_non_square_sizes_run(frames, height, width):
    model = perturb(tiny())
    x = torch.randn(1, C, frames, height, width)
    out = model(x, torch.tensor([500]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_size_not_divisible_by_patch_raises():
    model = tiny()
    with pytest.raises(ValueError, match="patch"):
        model(torch.randn(1, C, 2, 9, 8), torch.tensor([1]))


def test_wrong_channel_count_raises():
    model = tiny()
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, C + 1, 2, 8, 8), torch.tensor([1]))


def test_unpatchify_inverts_dit_patch_order():
    """Token features are ordered (p_row, p_col, channel), as DiT's unpatchify einsum expects."""
    p = 2
    model = tiny(patch_size=p, learned_sigma=False)
    co = model.out_channels
    x = torch.randn(B, co, T, H, W)
    h, w = H // p, W // p
    tokens = (x.reshape(B, co, T, h, p, w, p)  # (B, C, T, h, p, w, p)
              .permute(0, 2, 3, 5, 4, 6, 1)  # (B, T, h, w, p, p, C)
              .reshape(B, T, h * w, p * p * co))
    assert torch.equal(model.unpatchify(tokens, h, w), x)


def test_output_patch_depends_only_on_its_input_patch_when_blocks_are_identity():
    """With every block at its adaLN-Zero init, the token path is patch-wise: checks that
    patch embedding and unpatchify put each patch back at the same place."""
    model = tiny(patch_size=2)
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(std=0.1)
    x, t = make_inputs()
    ref = model(x, t)
    x2 = x.clone()
    x2[:, :, 1, 2:4, 4:6] += 1.0  # one patch of frame 1
    out = model(x2, t)
    changed = (out - ref).abs().amax(dim=(0, 1)) > 1e-6  # (T, H, W)
    expected = torch.zeros(T, H, W, dtype=torch.bool)
    expected[1, 2:4, 4:6] = True
    assert torch.equal(changed, expected)


# ------------------------------------------------------------------ attention structure

def test_temporal_attention_mixes_frames():
    model = perturb(tiny())
    x, t = make_inputs()
    ref = model(x, t)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    out = model(x2, t)
    assert differs(out[:, :, 3], ref[:, :, 3])


def test_spatial_blocks_alone_keep_frames_independent():
    model = freeze_temporal(perturb(tiny()))
    x, t = make_inputs()
    ref = model(x, t)
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    out = model(x2, t)
    assert differs(out[:, :, 0], ref[:, :, 0])
    assert torch.allclose(out[:, :, 1:], ref[:, :, 1:], atol=1e-6)


def test_spatial_attention_mixes_patches_within_a_frame():
    model = freeze_temporal(perturb(tiny()))
    x, t = make_inputs()
    ref = model(x, t)
    x2 = x.clone()
    x2[:, :, 0, :2, :2] += 1.0  # top-left patch of frame 0
    out = model(x2, t)
    assert differs(out[:, :, 0, -2:, -2:], ref[:, :, 0, -2:, -2:])  # reaches the far patch


def test_temporal_position_embedding_breaks_frame_permutation_symmetry():
    """Without a temporal position, the model would commute with reordering the frames."""
    model = perturb(tiny())
    x, t = make_inputs()
    perm = torch.tensor([3, 1, 0, 2])
    assert differs(model(x[:, :, perm], t), model(x, t)[:, :, perm])


# ------------------------------------------------------------------ conditioning

def test_null_label_uses_the_extra_embedding_row():
    num_classes = 5
    model = perturb(tiny(num_classes=num_classes))
    table = model.y_embedder.embedding_table
    assert table.num_embeddings == num_classes + 1
    emb = model.y_embedder(torch.tensor([-1, 0, 4]))
    assert torch.equal(emb[0], table.weight[num_classes])
    assert torch.equal(emb[1], table.weight[0]) and torch.equal(emb[2], table.weight[4])
    # at the model level: editing the null row changes null-label outputs only
    x, t = make_inputs()
    null = Conditioning(labels=torch.tensor([-1, -1]))
    real = Conditioning(labels=torch.tensor([0, 4]))
    ref_null, ref_real = model(x, t, null), model(x, t, real)
    with torch.no_grad():
        table.weight[num_classes] += 1.0
    assert differs(model(x, t, null), ref_null)
    assert torch.equal(model(x, t, real), ref_real)


def test_labels_change_the_output():
    model = perturb(tiny(num_classes=5))
    x, t = make_inputs()
    a = model(x, t, Conditioning(labels=torch.tensor([0, 1])))
    b = model(x, t, Conditioning(labels=torch.tensor([2, 1])))
    assert differs(a[0], b[0])
    assert torch.equal(a[1], b[1])  # the other example is untouched


@pytest.mark.parametrize("bad", [5, 17, -2])
def test_out_of_range_label_raises(bad):
    model = tiny(num_classes=5)
    x, t = make_inputs()
    with pytest.raises(ValueError, match="out of range"):
        model(x, t, Conditioning(labels=torch.tensor([0, bad])))


def test_float_labels_raise():
    model = tiny(num_classes=5)
    x, t = make_inputs()
    with pytest.raises(ValueError, match="integers"):
        model(x, t, Conditioning(labels=torch.tensor([0.0, 1.0])))


def test_class_conditional_model_without_labels_raises():
    model = tiny(num_classes=5)
    x, t = make_inputs()
    with pytest.raises(ValueError, match="labels"):
        model(x, t)


def test_unaccepted_conditioning_field_names_field_and_model():
    model = tiny(num_classes=5)
    x, t = make_inputs()
    cond = Conditioning(labels=torch.tensor([0, 1]), text=torch.randn(B, 3, 8))
    with pytest.raises(ValueError) as e:
        model(x, t, cond)
    assert "text" in str(e.value) and "Latte" in str(e.value)
    # an unconditional model does not take labels either
    with pytest.raises(ValueError) as e:
        tiny()(x, t, Conditioning(labels=torch.tensor([0, 1])))
    assert "labels" in str(e.value) and "Latte" in str(e.value)


def test_empty_conditioning_is_accepted_by_unconditional_model():
    model = perturb(tiny())
    x, t = make_inputs()
    assert torch.equal(model(x, t, Conditioning()), model(x, t))


# ------------------------------------------------------------------ embeddings vs reference formulas

def mae_1d(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE's get_1d_sincos_pos_embed_from_grid, written out from the formula."""
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def mae_2d(embed_dim: int, h: int, w: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed generalized to h×w: grid = meshgrid(w, h); the first half
    comes from grid[0], the x (column) coordinate."""
    grid_h = np.arange(h, dtype=np.float32)
    grid_w = np.arange(w, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape(2, 1, h, w)
    emb_h = mae_1d(embed_dim // 2, grid[0])  # (h*w, D/2)
    emb_w = mae_1d(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


@pytest.mark.parametrize("h,w,dim", [(4, 4, 32), (16, 16, 1152), (3, 5, 16), (6, 2, 64)])
def test_sincos_2d_matches_mae(h, w, dim):
    ours = sincos_2d(h, w, dim)
    ref = torch.from_numpy(mae_2d(dim, h, w)).float()
    assert ours.shape == (h * w, dim) and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


def test_sincos_2d_first_half_encodes_the_column():
    emb = sincos_2d(3, 4, 16).reshape(3, 4, 16)  # (row, col, D)
    # the first half depends on the column only, the second on the row only
    assert torch.equal(emb[0, :, :8], emb[2, :, :8])
    assert torch.equal(emb[:, 0, 8:], emb[:, 3, 8:])
    assert not torch.equal(emb[:, 0, :8], emb[:, 1, :8])


def test_sincos_temporal_matches_mae_1d():
    ours = sincos_temporal(16, 64)
    ref = torch.from_numpy(mae_1d(64, np.arange(16))).float()
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


def test_sincos_rejects_bad_widths():
    with pytest.raises(ValueError):
        sincos_2d(2, 2, 30)
    with pytest.raises(ValueError):
        sincos_1d(torch.arange(3), 7)


def test_timestep_embedding_is_cos_then_sin():
    dim, max_period = 256, 10000.0
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = t.numpy()[:, None].astype(np.float64) * freqs[None]
    ref = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    ours = timestep_embedding(t, dim)
    assert torch.allclose(ours.double(), torch.from_numpy(ref), atol=1e-4, rtol=0)
    # t = 0: all cosines are 1 and all sines 0
    assert torch.equal(ours[0, :half], torch.ones(half)) and torch.equal(ours[0, half:], torch.zeros(half))


def test_timestep_embedding_odd_dim_pads_with_zero_and_accepts_per_frame_t():
    emb = timestep_embedding(torch.tensor([[3.0, 5.0]]), 7)
    assert emb.shape == (1, 2, 7)
    assert torch.equal(emb[..., -1], torch.zeros(1, 2))
    assert torch.equal(emb[0, 1], timestep_embedding(torch.tensor([5.0]), 7)[0])


# ------------------------------------------------------------------ sizes and parameter count

@pytest.mark.parametrize("size,hidden,depth,heads", [("S", 384, 12, 6), ("B", 768, 12, 12),
                                                      ("L", 1024, 24, 16), ("XL", 1152, 28, 16)])
def test_named_sizes_match_official_dims(size, hidden, depth, heads):
    dims = LatteConfig(size=size).dims()
    assert (dims.hidden_size, dims.depth, dims.num_heads, dims.mlp_ratio) == (hidden, depth, heads, 4.0)


def test_named_size_fields_can_be_overridden():
    dims = LatteConfig(size="XL", depth=4, num_heads=8).dims()
    assert (dims.hidden_size, dims.depth, dims.num_heads) == (1152, 4, 8)


def test_latte_xl2_parameter_count_matches_official():
    """Latte-XL/2 (learn_sigma=True, as the official default, unconditional, 4 latent channels)
    has 673.99 M parameters in the official count, which includes the frozen pos_embed
    (1, 256, 1152) and temp_embed (1, 16, 1152) parameters; moviola computes those on the fly."""
    with torch.device("meta"):
        model = build_model(LatteConfig(size="XL", patch_size=2, learned_sigma=True), ConditionsConfig(),
                            in_channels=4)
    ours = sum(p.numel() for p in model.parameters())
    expected = 673_990_000 - (256 + 16) * 1152
    assert abs(ours - expected) < 10_000, (ours, expected)
    assert len(model.spatial_blocks) == 14 and len(model.temporal_blocks) == 14
    assert not any(True for _ in model.buffers())  # nothing size-dependent is stored


# ------------------------------------------------------------------ attention

def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    Bx, L, D = x.shape
    h, hd = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, L, 3D)
    q, k, v = qkv.split(D, dim=-1)
    q, k, v = (z.reshape(Bx, L, h, hd).transpose(1, 2) for z in (q, k, v))  # (B, h, L, hd)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # (B, h, L, L)
    out = (weights @ v).transpose(1, 2).reshape(Bx, L, D)
    return out @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_equals_naive_softmax_attention(qk_norm):
    torch.manual_seed(0)
    attn = Attention(32, 4, qkv_bias=True, qk_norm=qk_norm).double()
    if qk_norm:
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 1.5)
            attn.k_norm.bias.normal_()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    assert torch.allclose(attn(x), naive_attention(attn, x), atol=1e-10, rtol=0)


def test_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        Attention(30, 4)


def test_qk_norm_model_runs_and_differs():
    a = perturb(tiny(qk_norm=False))
    b = perturb(tiny(qk_norm=True))
    x, t = make_inputs()
    assert set(b.state_dict()) - set(a.state_dict())  # it has the norm weights
    out = b(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
