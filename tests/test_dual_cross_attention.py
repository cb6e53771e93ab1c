"""nn/unet.py's image cross-attention (VideoCrafter1 Eq. 7, DynamiCrafter's learnable gate): the keys it adds,
that it is exactly text-only when its factor is 0, an independent formula with explicit softmaxes, the
refusals, and that the temporal hook is untouched."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from moviola.nn.resampler import Resampler
from moviola.nn.unet import BasicTransformerBlock, UNet2D, UNetAttention

CROSS = 24
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=CROSS, attention_head_dim=8,
            norm_num_groups=8)


def unet(seed: int = 0, **kw) -> UNet2D:
    torch.manual_seed(seed)
    return UNet2D(**dict(TINY, **kw)).eval()


def inputs(seed: int = 1, n: int = 2, tokens: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g)
    text = torch.randn(n, 3, CROSS, generator=g)
    image = torch.randn(n, tokens, CROSS, generator=g)
    return x, text, image


def ip_keys(model: nn.Module) -> set[str]:
    return {k for k in model.state_dict() if k.endswith(("to_k_ip.weight", "to_v_ip.weight", ".alpha"))}


def attn2_modules(model: nn.Module) -> list[UNetAttention]:
    return [m.attn2 for m in model.modules() if isinstance(m, BasicTransformerBlock)]


# ---------------------------------------------------------------- parameters
def test_disabled_is_exactly_todays_unet():
    plain, off = unet(), unet(image_cross_attention=False)
    assert list(off.state_dict()) == list(plain.state_dict()) and not ip_keys(off)
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), plain.state_dict().values()))
    x, text, _ = inputs()
    with torch.no_grad():
        assert torch.equal(off(x, 5, text), plain(x, 5, text))


@pytest.mark.parametrize("learnable", [False, True])
def test_ip_keys_exist_exactly_when_enabled(learnable):
    plain = unet()
    model = unet(image_cross_attention=True, image_cross_attention_scale_learnable=learnable)
    attn2 = [name for name, m in model.named_modules() if name.endswith(".attn2")]
    assert len(attn2) == 4  # down 0, mid, up 1 (two resnets -> two transformers)
    expected = {f"{a}.{k}" for a in attn2 for k in ("to_k_ip.weight", "to_v_ip.weight")}
    if learnable:
        expected |= {f"{a}.alpha" for a in attn2}
    assert set(model.state_dict()) - set(plain.state_dict()) == expected == ip_keys(model)
    assert set(plain.state_dict()) <= set(model.state_dict())
    sd = model.state_dict()
    for a, m in zip(attn2, attn2_modules(model)):
        width = m.to_q.out_features
        assert sd[f"{a}.to_k_ip.weight"].shape == sd[f"{a}.to_v_ip.weight"].shape == (width, CROSS)
        assert m.to_k_ip.bias is None and m.to_v_ip.bias is None
        if learnable:
            assert sd[f"{a}.alpha"].shape == () and sd[f"{a}.alpha"].item() == 0.0  # gate starts at the scale
    # a text-to-image (or T2V) checkpoint initializes the image-to-video model: exactly the new keys are missing
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == expected and not result.unexpected_keys


# ---------------------------------------------------------------- exactness
def test_zero_factor_is_text_only_cross_attention_exactly():
    plain = unet()
    x, text, image = inputs()
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        expected = plain(x, 7, text, mask)
        zero = unet(image_cross_attention=True, image_cross_attention_scale=0.0)
        zero.load_state_dict(plain.state_dict(), strict=False)
        assert torch.equal(zero(x, 7, text, mask, image_context=image), expected)

        gated = unet(image_cross_attention=True, image_cross_attention_scale=0.8,
                     image_cross_attention_scale_learnable=True)
        gated.load_state_dict(plain.state_dict(), strict=False)
        for m in attn2_modules(gated):
            m.alpha.fill_(-100.0)  # tanh(-100) + 1 == 0 in float32: the gate is shut
        assert torch.equal(gated(x, 7, text, mask, image_context=image), expected)

        # all-zero image tokens (Conditioning.null's) add exactly nothing: the projections have no bias
        full = unet(image_cross_attention=True)
        full.load_state_dict(plain.state_dict(), strict=False)
        assert torch.equal(full(x, 7, text, mask, image_context=torch.zeros_like(image)), expected)


def reference_attn2(attn: UNetAttention, x, text, keep, image, gate) -> torch.Tensor:
    """Eq. 7 written out in float64: to_out(softmax(Q K_textᵀ/√d) V_text + gate · softmax(Q K_imgᵀ/√d) V_img)."""
    x, text, image = x.double(), text.double(), image.double()
    B, L, D = x.shape
    H = attn.heads
    d = D // H

    def w(linear):
        return linear.weight.detach().double()

    def heads(y):  # (B, S, D) -> (B, H, S, d)
        return y.reshape(B, y.shape[1], H, d).permute(0, 2, 1, 3)

    q = heads(x @ w(attn.to_q).T)

    def attend(k, v, keep=None):
        logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, L, S)
        if keep is not None:
            logits = logits.masked_fill(~keep[:, None, None, :], -math.inf)
        weights = torch.exp(logits - logits.amax(-1, keepdim=True))
        return (weights / weights.sum(-1, keepdim=True)) @ v

    out = attend(heads(text @ w(attn.to_k).T), heads(text @ w(attn.to_v).T), keep)
    out = out + gate * attend(heads(image @ w(attn.to_k_ip).T), heads(image @ w(attn.to_v_ip).T))
    out = out.permute(0, 2, 1, 3).reshape(B, L, D)
    return out @ w(attn.to_out[0]).T + attn.to_out[0].bias.detach().double()


@pytest.mark.parametrize("scale,learnable", [(1.0, False), (0.7, True)])
def test_every_attn2_matches_the_independent_formula(scale, learnable):
    model = unet(image_cross_attention=True, image_cross_attention_scale=scale,
                 image_cross_attention_scale_learnable=learnable)
    attns = attn2_modules(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in attns:
            m.to_v_ip.weight.mul_(3.0)  # make the image term large beside the text's
            if learnable:
                m.alpha.copy_(torch.randn((), generator=g))
    x, text, image = inputs(tokens=6)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], out))) for m in attns]
    with torch.no_grad():
        model(x, 3, text, mask, image_context=image)
    for h in hooks:
        h.remove()
    assert len(seen) == len(attns)
    for m, h, out in seen:
        gate = scale * (math.tanh(m.alpha.item()) + 1) if learnable else scale
        expected = reference_attn2(m, h, text, mask, image, gate)
        image_part = expected - reference_attn2(m, h, text, mask, image, 0.0)
        assert image_part.abs().max() > 1e-2  # the image term is really there
        assert (out.double() - expected).abs().max() < 1e-5


def test_the_image_path_changes_the_output_and_trains():
    plain = unet()
    model = unet(image_cross_attention=True, image_cross_attention_scale_learnable=True)
    model.load_state_dict(plain.state_dict(), strict=False)
    x, text, image = inputs()
    with torch.no_grad():
        base = plain(x, 9, text)
        out = model(x, 9, text, image_context=image)
        other = model(x, 9, text, image_context=torch.flip(image, dims=[0]))
    assert (out - base).abs().max() > 1e-3
    assert (out - other).abs().max() > 1e-3  # each example hears its own image
    # a single gradient step reaches the image projections and every gate
    model.train()
    model(x, 9, text, image_context=image).square().mean().backward()
    for m in attn2_modules(model):
        assert m.to_k_ip.weight.grad.abs().sum() > 0 and m.to_v_ip.weight.grad.abs().sum() > 0
        assert m.alpha.grad is not None and m.alpha.grad.abs() > 0


def test_resampler_tokens_drive_the_unet_end_to_end():
    """Resampler(output_dim=cross_attention_dim) tokens are the image context; gradients reach the resampler."""
    resampler = Resampler(dim=32, depth=1, dim_head=8, heads=4, num_queries=4, embedding_dim=20, output_dim=CROSS)
    model = unet(image_cross_attention=True)
    x, text, _ = inputs()
    patches = torch.randn(2, 9, 20)
    out = model(x, 4, text, image_context=resampler(patches))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert resampler.latents.grad.abs().sum() > 0 and resampler.proj_in.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- refusals
def test_refusals_are_named():
    x, text, image = inputs()
    on, off = unet(image_cross_attention=True), unet()
    with pytest.raises(ValueError, match=r"image_cross_attention=True.*image_context"):
        on(x, 1, text)
    with pytest.raises(ValueError, match=r"image_cross_attention=False"):
        off(x, 1, text, image_context=image)
    for bad in (image[:1], image[..., :5], image[0], image[:, :0]):
        with pytest.raises(ValueError, match=r"image_context must have shape \(N, M, cross_attention_dim\)"):
            on(x, 1, text, image_context=bad)
    with pytest.raises(ValueError, match="context"):  # the text stays required
        on(x, 1, image_context=image)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        UNet2D(**dict(TINY, cross_attention_dim=None, image_cross_attention=True))
    with pytest.raises(ValueError, match="image_cross_attention_scale_learnable given without"):
        UNet2D(**dict(TINY, image_cross_attention_scale_learnable=True))
    with pytest.raises(ValueError, match="image_cross_attention_scale=0.5 given without"):
        UNet2D(**dict(TINY, image_cross_attention_scale=0.5))
    with pytest.raises(ValueError, match="finite"):
        UNet2D(**dict(TINY, image_cross_attention=True, image_cross_attention_scale=float("nan")))
    with pytest.raises(ValueError, match="no block"):
        UNet2D(**dict(TINY, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                      mid_block_type="UNetMidBlock2D", image_cross_attention=True))


# ---------------------------------------------------------------- the temporal hook
class Recorder(nn.Module):
    def __init__(self, path, log):
        super().__init__()
        self.path, self.log = path, log
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(self, h, video):
        self.log.append((self.path, video))
        return h + self.scale


def test_temporal_hook_is_untouched():
    runs = {}
    for enabled in (False, True):
        built, log = [], []

        def factory(kind, channels, path, built=built, log=log):
            built.append((kind, channels, path))
            return Recorder(path, log)

        model = unet(temporal=factory, image_cross_attention=enabled)
        x, text, image = inputs()
        video = object()
        with torch.no_grad():
            model(x, 2, text, video=video, **({"image_context": image} if enabled else {}))
        assert all(v is video for _, v in log)
        runs[enabled] = (built, [p for p, _ in log], model)
    (built_off, called_off, off), (built_on, called_on, on) = runs[False], runs[True]
    assert built_on == built_off and called_on == called_off
    assert set(on.state_dict()) - set(off.state_dict()) == ip_keys(on)
    assert any(".temp_attentions." in k for k in off.state_dict())
