"""Latte's design switches: the four layouts (the paper's variants 1-4), tubelets, timestep/class injection,
temporal positions and image-video joint training. Every combination builds, runs forward and backward and
trains; properties pin each layout down; the interleaved layout (variant 1) with default switches is today's
model, bit for bit."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F

from moviola import Conditioning
from moviola.config import ConditionsConfig, ConfigError, LatteConfig, load_config
from moviola.data.joint import extra_image_frames
from moviola.models.latte import (LATTE_CLASSES, Latte, LatteFactorizedAttention, LatteFactorizedHeads,
                                  LatteLateFusion)
from moviola.models.latte.blocks import FactorizedAttentionBlock, FactorizedHeadsBlock
from moviola.models.registry import build_model
from moviola.nn import Attention, TransformerBlock, apply_rope, rope_1d, sincos_2d, timestep_embedding
from moviola.training.trainer import Trainer

B, C, T, H, W = 2, 3, 4, 8, 8
# the paper's variants 1..4, by their layout names
VARIANTS = ["interleaved", "late_fusion", "factorized_attention", "factorized_heads"]
V1, V2, V3, V4 = VARIANTS
PATCHES = ["frame", "tubelet"]
INJECTIONS = ["adaln", "tokens"]
POSITIONS = ["abs", "rope"]
COMBOS = list(itertools.product(VARIANTS, PATCHES, INJECTIONS, POSITIONS))


def make(variant: str = V1, patch_embed: str = "frame", injection: str = "adaln", temporal_pos: str = "abs",
         perturb: float = 0.1, seed: int = 0, **kw) -> Latte:
    """A 5-class tiny Latte of layout ``variant``, its weights perturbed; ``kw`` are LatteConfig fields."""
    args = dict(layout=variant, patch_size=2, hidden_size=32, depth=2, num_heads=4,
                patch_embed=patch_embed, tubelet_size=2 if patch_embed == "tubelet" else 1,
                injection=injection, temporal_pos=temporal_pos)
    args.update(kw)
    torch.manual_seed(seed)
    model = Latte.from_config(LatteConfig(**args), ConditionsConfig(num_classes=5), in_channels=C).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # make the zero-initialized gates and output layer live
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * perturb)
    return model


def inputs(frames: int = T, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, frames, H, W, generator=g)
    return x, torch.tensor([10, 700]), Conditioning(labels=torch.tensor([1, -1]))


def differs(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return (a - b).abs().max().item() > tol


# ------------------------------------------------------------------ every combination

@pytest.mark.parametrize("variant,patch_embed,injection,temporal_pos", COMBOS)
def test_every_combination_runs_forward_and_backward(variant, patch_embed, injection, temporal_pos):
    model = make(variant, patch_embed, injection, temporal_pos, learned_sigma=True)
    x, t, cond = inputs()
    out = model(x, t, cond)
    assert out.shape == (B, 2 * C, T, H, W) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the blocks learn: some gradient reaches every block's attention
    assert all(g.abs().sum() > 0 for n, g in grads.items() if "qkv.weight" in n)


TINY_RUN = ["name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
            "model.num_heads=2", "conditions.num_classes=48", "data.size=32", "data.frames=4", "data.count=8",
            "train.batch_size=2", "train.lr=3e-3", "train.device=cpu", "train.precision=fp32",
            "train.log_every=4", "train.checkpoint_every=1000", "sample.steps=4", "train.steps=60"]


def switches(variant, patch_embed, injection, temporal_pos) -> list[str]:
    return [f"model.layout={variant}", f"model.patch_embed={patch_embed}",
            f"model.tubelet_size={2 if patch_embed == 'tubelet' else 1}", f"model.injection={injection}",
            f"model.temporal_pos={temporal_pos}"]


@pytest.mark.parametrize("variant,patch_embed,injection,temporal_pos", COMBOS)
def test_every_combination_trains_on_moving_shapes(tmp_path, variant, patch_embed, injection, temporal_pos):
    cfg = load_config(overrides=TINY_RUN + switches(variant, patch_embed, injection, temporal_pos))
    Trainer(cfg, tmp_path / "run", quiet=True).train()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 15 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.98 * first, losses


# ------------------------------------------------------------------ variant 1 (interleaved) is today's model

def frozen_v1_forward(sd: dict, x: torch.Tensor, t: torch.Tensor, labels, patch: int, heads: int) -> torch.Tensor:
    """moviola 0.1's Latte forward (variant 1, adaLN-Zero, frame patches, absolute sin-cos), written
    out with torch.nn.functional on the state dict, frozen here: the model must reproduce it bit for bit."""
    Bx, Cx, Tx, Hx, Wx = x.shape
    w = sd["x_embedder.proj.weight"]
    D, hd = w.shape[0], w.shape[0] // heads
    frames = x.transpose(1, 2).reshape(Bx * Tx, Cx, Hx, Wx)
    tok = F.conv2d(frames, w, sd["x_embedder.proj.bias"], stride=patch)  # (B·T, D, h, w)
    h, wd = tok.shape[2:]
    tok = tok.flatten(2).transpose(1, 2).reshape(Bx, Tx, h * wd, D)
    tok = tok + sincos_2d(h, wd, D)
    tf = t[:, None].expand(Bx, Tx) if t.dim() == 1 else t
    c = F.linear(timestep_embedding(tf, 256), sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])
    c = F.linear(F.silu(c), sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    if labels is not None:
        table = sd["y_embedder.embedding_table.weight"]
        c = c + table[torch.where(labels < 0, table.shape[0] - 1, labels)][:, None]

    def block(prefix: str, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, g, n, d = x.shape
        mods = F.linear(F.silu(c), sd[f"{prefix}.adaLN_modulation.1.weight"], sd[f"{prefix}.adaLN_modulation.1.bias"])
        shift, scale, gate, shift2, scale2, gate2 = mods.chunk(6, dim=-1)
        y = (F.layer_norm(x, (d,), eps=1e-6) * (1 + scale) + shift).reshape(b * g, n, d)
        qkv = F.linear(y, sd[f"{prefix}.attn.qkv.weight"], sd[f"{prefix}.attn.qkv.bias"])
        q, k, v = qkv.view(b * g, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b * g, n, d)
        a = F.linear(a, sd[f"{prefix}.attn.proj.weight"], sd[f"{prefix}.attn.proj.bias"])
        x = x + gate * a.view(b, g, n, d)
        y = F.layer_norm(x, (d,), eps=1e-6) * (1 + scale2) + shift2
        y = F.gelu(F.linear(y, sd[f"{prefix}.mlp.fc1.weight"], sd[f"{prefix}.mlp.fc1.bias"]), approximate="tanh")
        return x + gate2 * F.linear(y, sd[f"{prefix}.mlp.fc2.weight"], sd[f"{prefix}.mlp.fc2.bias"])

    omega = 1.0 / 10000 ** (torch.arange(D // 2, dtype=torch.float64) / (D / 2.0))
    angles = torch.arange(Tx).double()[:, None] * omega[None]  # (T, D/2)
    temp_embed = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()  # [sin, cos]
    pairs = len({k.split(".")[1] for k in sd if k.startswith("spatial_blocks.")})
    for i in range(pairs):
        tok = block(f"spatial_blocks.{i}", tok, c[:, :, None]).transpose(1, 2)  # (B, N, T, D)
        if i == 0:
            tok = tok + temp_embed
        tok = block(f"temporal_blocks.{i}", tok, c[:, None]).transpose(1, 2)  # (B, T, N, D)
    shift, scale = F.linear(F.silu(c[:, :, None]), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=-1)
    out = F.linear(F.layer_norm(tok, (D,), eps=1e-6) * (1 + scale) + shift,
                   sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    co = out.shape[-1] // patch ** 2
    out = out.reshape(Bx, Tx, h, wd, patch, patch, co).permute(0, 6, 1, 2, 4, 3, 5)
    return out.reshape(Bx, co, Tx, h * patch, wd * patch)


V1_KEYS = {"x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias",
           "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight",
           "final_layer.linear.weight", "final_layer.linear.bias", "final_layer.adaLN_modulation.1.weight",
           "final_layer.adaLN_modulation.1.bias"} | {
    f"{kind}_blocks.{i}.{part}.{p}" for kind in ("spatial", "temporal") for i in range(2)
    for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1") for p in ("weight", "bias")}


def test_default_config_is_todays_variant_1_bit_for_bit():
    """The key names and the forward math of variant 1 are frozen: checkpoints of running and past
    runs keep loading with identical outputs."""
    cfg = LatteConfig(size="tiny", patch_size=2, hidden_size=32, depth=4, num_heads=4, learned_sigma=True)
    torch.manual_seed(0)
    model = build_model(cfg, ConditionsConfig(num_classes=5), in_channels=C).eval()
    assert type(model) is Latte and set(model.state_dict()) == V1_KEYS
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    sd = model.state_dict()
    x = torch.randn(B, C, 5, 8, 12, generator=g)
    for t in (torch.tensor([10, 700]), torch.randint(0, 1000, (B, 5), generator=g)):
        labels = torch.tensor([4, -1])
        with torch.no_grad():
            out = model(x, t, Conditioning(labels=labels))
            ref = frozen_v1_forward(sd, x, t, labels, patch=2, heads=4)
        assert torch.equal(out, ref)


# ------------------------------------------------------------------ properties of the variants

def test_v1_and_v2_agree_at_one_pair_and_differ_at_two():
    """With one spatial and one temporal block, interleaving and late fusion are the same network;
    with two pairs, only the order of the same blocks differs."""
    x, t, cond = inputs()
    for depth, same in ((2, True), (4, False)):
        a, b = make(V1, depth=depth), make(V2, depth=depth)
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x, t, cond), b(x, t, cond)) == same


def test_v2_is_every_spatial_block_then_every_temporal_block():
    model = make(V2, depth=4)
    x, t, cond = inputs()
    seen = []
    for name in ("spatial_blocks", "temporal_blocks"):
        for i, blk in enumerate(getattr(model, name)):
            blk.register_forward_hook(lambda *_, tag=f"{name}.{i}": seen.append(tag))
    model(x, t, cond)
    assert seen == ["spatial_blocks.0", "spatial_blocks.1", "temporal_blocks.0", "temporal_blocks.1"]


def _copy_chunks(dst: torch.nn.Linear, src: torch.nn.Linear, rows: list[int], D: int) -> None:
    """dst's 6 adaLN chunks from src's chunks ``rows`` (src may have 9)."""
    with torch.no_grad():
        for i, j in enumerate(rows):
            dst.weight[i * D:(i + 1) * D] = src.weight[j * D:(j + 1) * D]
            dst.bias[i * D:(i + 1) * D] = src.bias[j * D:(j + 1) * D]


@pytest.mark.parametrize("spatial_heads", [4, 0])
def test_v4_with_all_heads_on_one_axis_is_a_plain_block_on_that_axis(spatial_heads):
    torch.manual_seed(0)
    D, heads = 32, 4
    v4 = FactorizedHeadsBlock(D, heads, spatial_heads=spatial_heads)
    plain = TransformerBlock(D, heads)
    with torch.no_grad():
        for p in v4.parameters():
            p.normal_(std=0.2)
    plain.load_state_dict(v4.state_dict())  # same names: attn.qkv, attn.proj, mlp, adaLN_modulation
    x = torch.randn(B, T, 6, D)
    c = torch.randn(B, T, 1, D)
    out = v4(x, c, num_video=T)
    if spatial_heads == heads:
        ref = plain(x, c)  # attention over the 6 patches of each frame
    else:
        ref = plain(x.transpose(1, 2), c.transpose(1, 2)).transpose(1, 2)  # over the T frames of each patch
    assert torch.allclose(out, ref, atol=1e-5)


def test_v3_block_is_a_spatial_then_a_temporal_block():
    """With its MLP gate shut, a factorized-attention block equals a spatial block whose MLP is shut,
    followed by a temporal block built from its temporal attention."""
    torch.manual_seed(0)
    D, heads = 32, 4
    v3 = FactorizedAttentionBlock(D, heads)
    with torch.no_grad():
        for p in v3.parameters():
            p.normal_(std=0.2)
        v3.adaLN_modulation[1].weight[8 * D:].zero_()  # MLP gate = 0
        v3.adaLN_modulation[1].bias[8 * D:].zero_()
    spatial, temporal = TransformerBlock(D, heads), TransformerBlock(D, heads)
    spatial.attn.load_state_dict(v3.attn.state_dict())
    temporal.attn.load_state_dict(v3.temporal_attn.state_dict())
    _copy_chunks(spatial.adaLN_modulation[1], v3.adaLN_modulation[1], [0, 1, 2, 6, 7, 8], D)  # MLP gate 0
    _copy_chunks(temporal.adaLN_modulation[1], v3.adaLN_modulation[1], [3, 4, 5, 6, 7, 8], D)
    x, c = torch.randn(B, T, 6, D), torch.randn(B, T, 1, D)
    ref = temporal(spatial(x, c).transpose(1, 2), c.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(v3(x, c, num_video=T), ref, atol=1e-5)


def test_attention_over_one_frame_is_the_value_projection():
    """A temporal attention over a single frame cannot mix tokens: each token gets proj(v(token))."""
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(10, 1, 32)
    v = F.linear(x, attn.qkv.weight[64:], attn.qkv.bias[64:])
    assert torch.allclose(attn(x), attn.proj(v), atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_frame_with_temporal_modules_keeps_patches_apart(variant):
    """One frame, spatial attention switched off (factorized heads: every head on time): what remains is
    per-token work, so editing one patch changes that patch of the output only."""
    kw = {"spatial_heads": 0} if variant == V4 else {}
    model = make(variant, **kw)
    with torch.no_grad():
        for blk in (model.spatial_blocks if variant in (V1, V2) else []):
            blk.adaLN_modulation[1].weight[2 * 32:3 * 32].zero_()  # spatial attention gate = 0
            blk.adaLN_modulation[1].bias[2 * 32:3 * 32].zero_()
        for blk in (model.blocks if variant == V3 else []):
            blk.adaLN_modulation[1].weight[2 * 32:3 * 32].zero_()
            blk.adaLN_modulation[1].bias[2 * 32:3 * 32].zero_()
    x, t, cond = inputs(frames=1)
    x2 = x.clone()
    x2[:, :, 0, :2, :2] += 1.0
    diff = (model(x2, t, cond) - model(x, t, cond)).abs().amax(dim=(0, 1, 2))  # (H, W)
    assert diff[:2, :2].max() > 1e-4 and diff[2:].max() < 1e-6 and diff[:, 2:].max() < 1e-6


@pytest.mark.parametrize("variant,injection", list(itertools.product(VARIANTS, INJECTIONS)))
def test_images_are_seen_by_spatial_modules_only(variant, injection):
    """Joint training: trailing image frames never meet the video frames nor each other (spatial
    attention is within a frame, temporal modules skip images)."""
    model = make(variant, injection=injection)
    x, t, cond = inputs(frames=T + 2)
    ref = model(x, t, cond, num_images=2)
    video_edit = x.clone()
    video_edit[:, :, 1] += 1.0
    out = model(video_edit, t, cond, num_images=2)
    assert differs(out[:, :, :T], ref[:, :, :T]) and torch.allclose(out[:, :, T:], ref[:, :, T:], atol=1e-6)
    image_edit = x.clone()
    image_edit[:, :, T] += 1.0
    out = model(image_edit, t, cond, num_images=2)
    assert differs(out[:, :, T], ref[:, :, T])
    assert torch.allclose(out[:, :, :T], ref[:, :, :T], atol=1e-6)
    assert torch.allclose(out[:, :, T + 1], ref[:, :, T + 1], atol=1e-6)
    # without images the same frames are a video: the image frames are mixed in
    assert differs(model(x, t, cond)[:, :, T:], ref[:, :, T:])


def test_num_images_needs_frame_patches_and_a_video_left():
    x, t, cond = inputs()
    with pytest.raises(ValueError, match="num_images"):
        make(V1)(x, t, cond, num_images=T)
    with pytest.raises(ValueError, match="num_images"):
        make(V1, "tubelet")(x, t, cond, num_images=2)


# ------------------------------------------------------------------ patch embeddings

def test_tubelet_unpatchify_inverts_the_token_layout():
    model = make(V1, "tubelet", learned_sigma=False)
    p, s = 2, 2
    x = torch.randn(B, C, T, H, W)
    h, w = H // p, W // p
    tokens = (x.reshape(B, C, T // s, s, h, p, w, p)  # (B, C, T', s, h, p, w, p)
              .permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, T', h, w, s, p, p, C)
              .reshape(B, T // s, h * w, s * p * p * C))
    assert torch.equal(model.unpatchify(tokens, h, w), x)


def test_tubelets_tie_frames_in_pairs():
    """Temporal blocks switched off: an edit of frame 0 reaches frames 0 and 1 (its tubelet) only."""
    model = make(V1, "tubelet")
    with torch.no_grad():
        for blk in model.temporal_blocks:
            blk.adaLN_modulation[1].weight.zero_()
            blk.adaLN_modulation[1].bias.zero_()
    x, t, cond = inputs()
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    diff = (model(x2, t, cond) - model(x, t, cond)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
    assert diff[0] > 1e-4 and diff[1] > 1e-4 and diff[2:].max() < 1e-6
    assert model.x_embedder.proj.weight.shape == (32, C, 2, 2, 2)


def test_tubelet_per_frame_timesteps_average_within_a_tubelet():
    model = make(V1, "tubelet")
    x, t, cond = inputs()
    same = model(x, t[:, None].expand(B, T), cond)
    assert torch.allclose(same, model(x, t, cond), atol=1e-5)
    with pytest.raises(ValueError, match="divisible by the tubelet"):
        model(torch.randn(B, C, 3, H, W), t, cond)


# ------------------------------------------------------------------ injection and positions

def test_token_injection_has_no_modulation_and_still_hears_t_and_labels():
    model = make(V1, injection="tokens")
    assert not any("adaLN" in k or "scale_shift_table" in k for k in model.state_dict())
    assert model.spatial_blocks[0].norm1.weight is not None  # plain pre-LN blocks with affine norms
    x, t, cond = inputs()
    ref = model(x, t, cond)
    assert differs(model(x, torch.tensor([500, 700]), cond)[0], ref[0])
    assert differs(model(x, t, Conditioning(labels=torch.tensor([2, -1])))[0], ref[0])
    assert torch.allclose(model(x, t, Conditioning(labels=torch.tensor([2, -1])))[1], ref[1], atol=1e-6)


def test_rope_scores_depend_on_frame_differences_only():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(3, 6, 32)
    cos, sin = rope_1d(16, 8)
    assert torch.allclose(attn(x, rope=(cos[:6], sin[:6])), attn(x, rope=(cos[7:13], sin[7:13])), atol=1e-5)
    assert differs(attn(x, rope=(cos[:6], sin[:6])), attn(x))
    q = torch.randn(6, 8)
    assert torch.allclose(apply_rope(q, cos[:6] * 0 + 1, sin[:6] * 0), q)  # angle 0: the identity


@pytest.mark.parametrize("temporal_pos", POSITIONS)
def test_temporal_positions_break_frame_permutation_symmetry(temporal_pos):
    model = make(V1, temporal_pos=temporal_pos)
    x, t, cond = inputs()
    perm = torch.tensor([3, 1, 0, 2])
    assert differs(model(x[:, :, perm], t, cond), model(x, t, cond)[:, :, perm])


def test_rope_model_adds_no_absolute_temporal_embedding():
    model = make(V1, temporal_pos="rope")
    temporal_in, spatial_out = [], []
    model.temporal_blocks[0].register_forward_pre_hook(lambda m, args: temporal_in.append(args[0]))
    model.spatial_blocks[0].register_forward_hook(lambda m, a, out: spatial_out.append(out))
    x, t, cond = inputs()
    model(x, t, cond)
    assert torch.equal(temporal_in[0], spatial_out[0].transpose(1, 2))  # nothing added in between


def test_variant_classes_and_depth_rules():
    assert [type(make(v)) for v in VARIANTS] == [Latte, LatteLateFusion, LatteFactorizedAttention,
                                                 LatteFactorizedHeads]
    assert LATTE_CLASSES == dict(zip(VARIANTS, [Latte, LatteLateFusion, LatteFactorizedAttention,
                                                LatteFactorizedHeads]))
    assert len(make(V3, depth=4).blocks) == 2 and len(make(V4, depth=3).blocks) == 3
    with pytest.raises(ValueError, match="even"):
        make(V1, depth=3)
    # factorized heads (variant 4) has exactly interleaved's (variant 1's) parameters
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(make(V4, depth=4)) == count(make(V1, depth=4))


# ------------------------------------------------------------------ configs and joint-training batches

@pytest.mark.parametrize("overrides,match", [
    (["model.tubelet_size=2"], r"needs model\.patch_embed=tubelet"),
    (["model.patch_embed=tubelet", "model.tubelet_size=3", "data.frames=16"], r"not divisible by model\.tubelet"),
    (["model.variant=5"], r"not one of \[1, 2, 3, 4\]"),  # the old key, on purpose
    (["model.layout=factorised_heads"], r"did you mean 'factorized_heads'"),
    (["model.injection=token"], r"did you mean 'tokens'"),
    (["model.temporal_pos=rope", "model.hidden_size=36", "model.num_heads=4"], r"even head width"),
    (["data.use_image_num=2", "model.patch_embed=tubelet", "model.tubelet_size=2"], r"patch_embed=frame"),
    (["data.use_image_num=-1"], r"use_image_num"),
    (["model.pos_interpolation_scale=0"], r"pos_interpolation_scale"),
])
def test_switch_values_are_checked(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_variant_4_takes_an_odd_depth():
    assert load_config(overrides=["model.layout=factorized_heads", "model.depth=3"]).model.depth == 3


def test_extra_images_come_from_other_clips_with_their_labels():
    from moviola.data.shapes import MovingShapes

    ds = MovingShapes(count=8, size=32, frames=4)
    idx = [0, 5, 6]
    images, labels = extra_image_frames(ds, idx, 3, seed=0, step=7)
    again, labels2 = extra_image_frames(ds, idx, 3, seed=0, step=7)
    assert images.shape == (3, 3, 3, 32, 32) and torch.equal(images, again) and torch.equal(labels, labels2)
    assert not torch.equal(extra_image_frames(ds, idx, 3, seed=0, step=8)[0], images)
    frames = {(k, f): ds[k]["video"][:, f] for k in range(8) for f in range(4)}
    for i, own in enumerate(idx):
        for j in range(3):
            src = [k for (k, f), v in frames.items() if torch.equal(v, images[i, :, j])]
            assert src and all(k != own for k in src)
            assert labels[i, j] == ds[src[0]]["label"]


def test_joint_training_batches_and_trains(tmp_path):
    cfg = load_config(overrides=TINY_RUN + ["data.use_image_num=2", "train.steps=4",
                                            "model.layout=factorized_attention"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    x0, cond, t, noise, _ = trainer.make_batch(0)
    assert x0.shape == (2, 3, 6, 32, 32) and noise.shape == x0.shape
    assert cond.labels.shape == (2, 6)
    calls = []
    trainer.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("num_images")), with_kwargs=True)
    trainer.train()
    assert calls and set(calls) == {2}


@pytest.mark.parametrize("bad", [dict(patch_embed="tube"), dict(injection="adaLN"), dict(temporal_pos="relative"),
                                 dict(patch_embed="frame", tubelet_size=2)])
def test_direct_construction_rejects_unknown_switch_values(bad):
    with pytest.raises(ValueError):
        Latte(LatteConfig(patch_size=2, hidden_size=32, depth=2, num_heads=4, **bad), ConditionsConfig(), C)


def test_a_layout_class_refuses_the_config_of_another_layout():
    """Each layout is one class; building one from another layout's config would silently run the wrong network."""
    cfg = LatteConfig(layout=V2, patch_size=2, hidden_size=32, depth=2, num_heads=4)
    with pytest.raises(ValueError, match=r"from_config"):
        Latte(cfg, ConditionsConfig(), C)
    assert type(Latte.from_config(cfg, ConditionsConfig(), C)) is LatteLateFusion


@pytest.mark.parametrize("condition", [dict(fps=True), dict(image=True), dict(low_res=True), dict(self_cond=0.5)])
def test_construction_refuses_a_condition_latte_does_not_take(condition):
    cfg = LatteConfig(patch_size=2, hidden_size=32, depth=2, num_heads=4)
    with pytest.raises(ValueError) as e:
        Latte.from_config(cfg, ConditionsConfig(**condition), C)
    assert next(iter(condition)) in str(e.value) and "Latte" in str(e.value)
