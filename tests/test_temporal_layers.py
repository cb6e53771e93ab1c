"""Video LDM's temporal layers (moviola.nn.temporal) on tiny random tensors, fp32: the window mask,
the relative (RoPE) frame encoding against a naive re-implementation, joint image-video batches,
text cross-attention, the α-blend, and argument errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moviola.nn.attention import apply_rope
from moviola.nn.embeddings import rope_1d
from moviola.nn.temporal import AlphaBlend, TemporalConvBlock, TemporalSelfAttention

C, GROUPS, HEAD_DIM, CTX = 8, 2, 4, 6  # 2 heads of width 4


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Every parameter random, the zero-initialized output layers too (else the residual is 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("mix_logit"):
                continue
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * std)
    return module


def frames_batch(B: int = 2, T: int = 6, H: int = 3, W: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(B * T, C, H, W, generator=torch.Generator().manual_seed(seed))  # (B·T, C, H, W)


def text(B: int = 2, L: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randn(B, L, CTX, generator=torch.Generator().manual_seed(seed))


def attention_layer(**kw) -> TemporalSelfAttention:
    return TemporalSelfAttention(C, GROUPS, head_dim=HEAD_DIM, **kw)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # compare bit patterns (-0.0 != 0.0, NaN == NaN)


def frame_diff(a: torch.Tensor, b: torch.Tensor, T: int) -> torch.Tensor:
    """max |a − b| per frame index of clip 0: (T,)."""
    return (a - b)[:T].abs().amax(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- window mask
@pytest.mark.parametrize("window", [0, 1, 2])
def test_window_mask_limits_which_frames_interact(window):
    T = 7
    layer = randomize(attention_layer(window=window))
    x = frames_batch(B=1, T=T)
    with torch.no_grad():
        out = layer(x, T)
        for j in range(T):
            x2 = x.clone()
            # change frame j only (randomly: GroupNorm would remove a constant)
            x2[j] += torch.randn(x2[j].shape, generator=torch.Generator().manual_seed(j))
            diff = frame_diff(layer(x2, T), out, T)
            for i in range(T):
                if abs(i - j) <= window:
                    assert diff[i] > 1e-4, (i, j, diff)
                else:
                    assert diff[i] == 0, (i, j, diff)
    mask = layer.window_mask(T)
    assert mask.dtype == torch.bool and mask.shape == (T, T)
    assert all(mask[i, j] == (abs(i - j) <= window) for i in range(T) for j in range(T))


def test_without_window_every_frame_sees_every_frame():
    T = 7
    full, wide = randomize(attention_layer()), randomize(attention_layer(window=T - 1))
    x = frames_batch(B=1, T=T)
    with torch.no_grad():
        for j in (0, 3, 6):
            x2 = x.clone()
            x2[j] += torch.randn(x2[j].shape, generator=torch.Generator().manual_seed(j))
            assert (frame_diff(full(x2, T), full(x, T), T) > 1e-4).all()
        assert torch.equal(full(x, T), wide(x, T))  # a window covering the clip is no window


# ----------------------------------------------------------------------------- relative encoding
def my_rope(vec: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotate channel pairs (i, i + hd/2) of a (hd,) vector by pos · theta^(-2i/hd)."""
    hd = vec.shape[0]
    out = vec.clone()
    for i in range(hd // 2):
        a = pos * theta ** (-2 * i / hd)
        x1, x2 = vec[i], vec[i + hd // 2]
        out[i] = x1 * math.cos(a) - x2 * math.sin(a)
        out[i + hd // 2] = x1 * math.sin(a) + x2 * math.cos(a)
    return out


def naive_self_attention(layer: TemporalSelfAttention, x: torch.Tensor, T: int, offset: int = 0,
                         window=None) -> torch.Tensor:
    """The layer's residual, one pixel, head and query frame at a time, in float64, positions offset..offset+T-1."""
    d = torch.float64
    BT, _, H, W = x.shape
    heads, hd = layer.attn.num_heads, layer.attn.head_dim
    normed = torch.stack([F.group_norm(f[None].to(d), GROUPS, layer.norm.weight.to(d), layer.norm.bias.to(d),
                                       layer.norm.eps)[0] for f in x])  # per frame, (B·T, C, H, W)
    Wqkv, bqkv = layer.attn.qkv.weight.to(d), layer.attn.qkv.bias.to(d)
    Wp, bp = layer.attn.proj.weight.to(d), layer.attn.proj.bias.to(d)
    out = torch.zeros(BT, C, H, W, dtype=d)
    for b in range(BT // T):
        for y in range(H):
            for z in range(W):
                seq = normed[b * T:(b + 1) * T, :, y, z]  # (T, C)
                qkv = (seq @ Wqkv.T + bqkv).view(T, 3, heads, hd)
                heads_out = []
                for h in range(heads):
                    q = [my_rope(qkv[t, 0, h], offset + t) for t in range(T)]
                    k = [my_rope(qkv[t, 1, h], offset + t) for t in range(T)]
                    v = qkv[:, 2, h]
                    rows = []
                    for i in range(T):
                        logits = torch.stack([q[i] @ k[j] / math.sqrt(hd) for j in range(T)])
                        if window is not None:
                            logits = torch.stack([lg if abs(i - j) <= window else torch.tensor(-math.inf, dtype=d)
                                                  for j, lg in enumerate(logits)])
                        p = torch.exp(logits - logits.max())
                        rows.append((p / p.sum()) @ v)
                    heads_out.append(torch.stack(rows))  # (T, hd)
                out[b * T:(b + 1) * T, :, y, z] = torch.cat(heads_out, dim=1) @ Wp.T + bp
    return out


@pytest.mark.parametrize("window", [None, 1])
def test_attention_matches_a_naive_implementation_at_any_position_offset(window):
    T = 5
    layer = randomize(attention_layer(window=window), seed=4)
    x = frames_batch(B=2, T=T, H=2, W=2)
    with torch.no_grad():
        ours = layer(x, T).double()
    for offset in (0, 9):  # positions 9..13 give the same output: only frame offsets matter
        naive = naive_self_attention(layer, x, T, offset=offset, window=window)
        torch.testing.assert_close(ours, naive, rtol=0, atol=1e-5)
    assert ours.abs().max() > 0.1  # not trivially zero


def test_rope_logits_depend_only_on_position_offsets():
    T, hd, s = 6, 8, 11
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(T, hd, generator=g), torch.randn(T, hd, generator=g)
    cos, sin = rope_1d(T + s, hd)

    def logits(q_pos: slice, k_pos: slice) -> torch.Tensor:
        return apply_rope(q, cos[q_pos], sin[q_pos]) @ apply_rope(k, cos[k_pos], sin[k_pos]).T  # (T, T)

    base = logits(slice(0, T), slice(0, T))
    torch.testing.assert_close(logits(slice(s, s + T), slice(s, s + T)), base, rtol=0, atol=1e-5)
    assert (logits(slice(s, s + T), slice(0, T)) - base).abs().max() > 1e-2  # a relative shift does matter
    for t in (0, 3, T + s - 1):  # the helper rotates as the naive reference does
        torch.testing.assert_close(apply_rope(q[0], cos[t], sin[t]), my_rope(q[0], t), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- joint image-video batches
BRANCHES = {
    "conv": lambda: TemporalConvBlock(C, GROUPS, temporal_kernel=3, spatial_kernel=3),
    "attention": lambda: attention_layer(),
    "attention+window+text": lambda: attention_layer(window=1, context_dim=CTX),
}


def branch_kwargs(name: str) -> dict:
    return {"context": text(), "context_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()} \
        if "text" in name else {}


@pytest.mark.parametrize("name", list(BRANCHES))
def test_images_in_a_joint_batch_pass_through_and_never_reach_the_video(name):
    B, T, n = 2, 6, 2
    V = T - n
    blend = randomize(AlphaBlend(BRANCHES[name](), alpha_init=0.3), seed=6)
    kw = branch_kwargs(name)
    x = frames_batch(B=B, T=T)
    x[:, 0, 0] = -0.0  # negative zeros must come out negative
    is_image = (torch.arange(B * T) % T) >= V
    with torch.no_grad():
        out = blend(x, T, num_images=n, **kw)
        assert torch.equal(bits(out[is_image]), bits(x[is_image]))  # images: exactly h
        assert (out[~is_image] - x[~is_image]).abs().max() > 1e-3  # videos: mixed
        r = blend.branch(x, T, num_images=n, **kw)
        assert torch.equal(bits(r[is_image]), bits(torch.zeros_like(r[is_image])))  # residual exactly +0

        x2 = x.clone()
        x2[is_image] += torch.randn(x2[is_image].shape, generator=torch.Generator().manual_seed(7))
        out2 = blend(x2, T, num_images=n, **kw)
        assert torch.equal(bits(out2[~is_image]), bits(out[~is_image]))  # videos bit-identical
        assert torch.equal(bits(out2[is_image]), bits(x2[is_image]))
        # control: treated as video frames, the same change does reach the other frames
        assert (blend(x2, T, **kw) - blend(x, T, **kw))[~is_image].abs().max() > 1e-4

        # the video frames are computed as if the images were not there
        alone = blend(x.reshape(B, T, C, 3, 2)[:, :V].reshape(B * V, C, 3, 2), V, **kw)
        torch.testing.assert_close(out[~is_image], alone, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- text cross-attention
def test_text_cross_attention_starts_at_zero():
    layer = attention_layer(context_dim=CTX)
    x = frames_batch()
    r = layer(x, 6, context=text())
    assert torch.equal(r, torch.zeros_like(r))
    AlphaBlend(layer)(x, 6, context=text()).sum().backward()  # gradients reach the zero-init projection
    assert layer.cross_attn.proj.weight.grad is not None


def naive_with_text(layer: TemporalSelfAttention, x: torch.Tensor, T: int, ctx: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """y = x + SA(GN(x)); residual = y + CA(LN(y), text of the clip) − x, one pixel sequence at a time."""
    BT, _, H, W = x.shape
    sa = TemporalSelfAttention(C, GROUPS, head_dim=HEAD_DIM)
    sa.load_state_dict({k: v for k, v in layer.state_dict().items() if k.startswith(("norm.", "attn."))})
    r1 = sa(x, T)
    out = torch.zeros_like(x)
    for b in range(BT // T):
        for y in range(H):
            for z in range(W):
                seq = x[b * T:(b + 1) * T, :, y, z] + r1[b * T:(b + 1) * T, :, y, z]  # (T, C)
                cross = layer.cross_attn(layer.cross_norm(seq)[None], ctx[b:b + 1], mask[b:b + 1])[0]
                out[b * T:(b + 1) * T, :, y, z] = r1[b * T:(b + 1) * T, :, y, z] + cross
    return out


def test_text_cross_attention_uses_each_clips_text_and_respects_the_mask():
    T = 4
    layer = randomize(attention_layer(context_dim=CTX), seed=8)
    x = frames_batch(B=2, T=T)
    ctx = text()
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        out = layer(x, T, context=ctx, context_mask=mask)
        torch.testing.assert_close(out, naive_with_text(layer, x, T, ctx, mask), rtol=0, atol=1e-5)

        other = ctx.clone()
        other[1] += 1.0  # clip 1's text only
        out2 = layer(x, T, context=other, context_mask=mask)
        assert torch.equal(out2[:T], out[:T])  # clip 0 does not see clip 1's text
        assert (out2[T:] - out[T:]).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every frame of clip 1 does

        masked = ctx.clone()
        masked[0, [2, 4]] = torch.randn(2, CTX) * 10  # masked-out tokens of clip 0
        torch.testing.assert_close(layer(x, T, context=masked, context_mask=mask), out, rtol=0, atol=1e-6)
        kept = ctx.clone()
        kept[0, 3] += 1.0  # a real token of clip 0
        assert (layer(x, T, context=kept, context_mask=mask)[:T] - out[:T]).abs().max() > 1e-4


def test_text_arguments_are_checked():
    x = frames_batch()
    with pytest.raises(ValueError, match=r"^context is required"):
        attention_layer(context_dim=CTX)(x, 6)
    with pytest.raises(ValueError, match=r"^context is required"):
        AlphaBlend(attention_layer(context_dim=CTX))(x, 6)
    with pytest.raises(ValueError, match=r"^context"):
        attention_layer()(x, 6, context=text())  # no cross-attention to use it
    with pytest.raises(ValueError, match=r"^context must have shape"):
        attention_layer(context_dim=CTX)(x, 6, context=text(B=3))
    with pytest.raises(ValueError, match=r"^context_mask must have shape"):
        attention_layer(context_dim=CTX)(x, 6, context=text(), context_mask=torch.ones(2, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------- AlphaBlend
class Constant(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, h, frames, num_images=0):
        return torch.full_like(h, self.value)


def test_alpha_blend_learned_and_fixed():
    x = frames_batch()
    learned = AlphaBlend(randomize(attention_layer(), seed=9), alpha_init=0.3)
    assert isinstance(learned.mix_logit, torch.nn.Parameter)
    assert abs(learned.alpha.item() - 0.3) < 1e-6
    with torch.no_grad():
        torch.testing.assert_close(learned(x, 6), x + 0.7 * learned.branch(x, 6), rtol=0, atol=1e-6)

    branch = randomize(attention_layer(), seed=9)
    fixed = AlphaBlend(branch, alpha_init=0.3, learned=False)
    assert [id(p) for p in fixed.parameters()] == [id(p) for p in branch.parameters()]  # no α parameter
    assert "fixed_alpha" in dict(fixed.named_buffers()) and "fixed_alpha" in fixed.state_dict()
    assert abs(fixed.alpha.item() - 0.3) < 1e-7 and not fixed.alpha.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(fixed(x, 6), learned(x, 6), rtol=0, atol=1e-6)
        zero = AlphaBlend(branch, alpha_init=0.0, learned=False)
        torch.testing.assert_close(zero(x, 6), x + branch(x, 6), rtol=0, atol=1e-6)


@pytest.mark.parametrize("how", ["fixed", "logit"])
def test_alpha_one_recovers_the_input_exactly_without_nan(how):
    x = frames_batch()
    for branch in (randomize(attention_layer(), seed=10), Constant(math.inf), Constant(math.nan)):
        if how == "fixed":
            blend = AlphaBlend(branch, alpha_init=1.0, learned=False)
        else:
            blend = AlphaBlend(branch)
            with torch.no_grad():
                blend.mix_logit.fill_(math.inf)
        h = x.clone().requires_grad_(True)
        out = blend(h, 6)
        assert torch.equal(bits(out.detach()), bits(x))
        out.square().sum().backward()
        assert torch.isfinite(h.grad).all()
        if how == "logit":
            assert torch.isfinite(blend.mix_logit.grad).all()
    # control: below 1, a non-finite branch does show
    assert not torch.isfinite(AlphaBlend(Constant(math.inf), alpha_init=0.99, learned=False)(x, 6)).all()


def test_alpha_blend_keeps_image_frames_bit_for_bit_whatever_the_branch():
    """α = 1 for images even if the branch ignores num_images; signed zeros and infinities survive."""
    B, T, n = 2, 4, 1
    x = frames_batch(B=B, T=T)
    x[::2, 0] = -0.0  # some negative zeros, in image and video frames
    x[3, 1, 0, 0] = math.inf  # an image frame's inf
    is_image = (torch.arange(B * T) % T) >= T - n
    for value in (1.0, math.inf, math.nan):
        blend = AlphaBlend(Constant(value), alpha_init=0.25, learned=False)
        out = blend(x, T, num_images=n)
        assert torch.equal(bits(out[is_image]), bits(x[is_image]))
        if value == 1.0:
            torch.testing.assert_close(out[~is_image], x[~is_image] + 0.75, rtol=0, atol=0)


def test_gradient_reaches_the_logit_only_when_learned():
    x = frames_batch()
    learned = AlphaBlend(randomize(TemporalConvBlock(C, GROUPS), seed=11))
    learned(x, 6, num_images=1).square().sum().backward()
    assert learned.mix_logit.grad is not None and learned.mix_logit.grad.abs() > 0
    fixed = AlphaBlend(randomize(TemporalConvBlock(C, GROUPS), seed=11), learned=False)
    fixed(x, 6).square().sum().backward()
    assert fixed.fixed_alpha.grad is None and fixed.branch.conv2.weight.grad is not None


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, name", [
    ({"window": -1}, "window"),
    ({"window": 1.5}, "window"),
    ({"window": True}, "window"),
    ({"context_dim": 0}, "context_dim"),
])
def test_bad_attention_options_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        attention_layer(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: TemporalConvBlock(C, GROUPS),
    lambda: attention_layer(),
    lambda: AlphaBlend(TemporalConvBlock(C, GROUPS)),
])
def test_bad_frames_or_num_images_name_the_argument(make):
    layer = make()
    x = frames_batch(B=2, T=3)  # 6 frames
    for frames, num_images, name in [(3, 3, "num_images"), (3, 4, "num_images"), (3, -1, "num_images"),
                                     (3, 1.0, "num_images"), (4, 0, "frames"), (0, 0, "frames"),
                                     (2.0, 0, "frames")]:
        with pytest.raises(ValueError, match=rf"^{name}\b"):
            layer(x, frames, num_images=num_images)


@pytest.mark.parametrize("alpha_init, learned", [(0.0, True), (1.0, True), (1.5, True), (-0.1, False),
                                                 (1.1, False), (math.nan, False)])
def test_bad_alpha_init_names_the_argument(alpha_init, learned):
    with pytest.raises(ValueError, match=r"^alpha_init"):
        AlphaBlend(TemporalConvBlock(C, GROUPS), alpha_init=alpha_init, learned=learned)
