"""Image tokens: the frozen CLIP image encoder (conditioning/image.py) against transformers' own model and image
processor, its factory and fingerprint; the Perceiver Resampler (nn/resampler.py) against a naive computation
and the official parameter names; the small trainable PatchImageEncoder (nn/image_tokens.py)."""
from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pytest
import torch

from moviola.conditioning.image import (CLIP_MEAN, CLIPImageEncoder, ImageEncoderError, build_image_encoder,
                                        image_encoder_fingerprint)
from moviola.nn.image_tokens import PatchImageEncoder
from moviola.nn.resampler import PerceiverAttention, Resampler

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def processor(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "requires torchvision, falling back to the PIL backend"
        return transformers.CLIPImageProcessor(**kw)


def save_vision(path, cls=None, seed=0, with_processor=True):
    torch.manual_seed(seed)
    cls = cls or transformers.CLIPVisionModel
    model = cls(transformers.CLIPVisionConfig(projection_dim=8, **VISION)).eval()
    model.save_pretrained(path)
    if with_processor:
        processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=MEAN,
                  image_std=STD).save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_vision")
    save_vision(path)
    return path


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return CLIPImageEncoder(clip_dir)


def reference(clip_dir, u8: np.ndarray):
    """transformers' processor (PIL) and model on uint8 images (B, H, W, 3) -> (pixel_values, tokens)."""
    model = transformers.CLIPVisionModel.from_pretrained(str(clip_dir)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = transformers.CLIPImageProcessor.from_pretrained(str(clip_dir))(
            images=[Image.fromarray(a) for a in u8], return_tensors="pt").pixel_values
    with torch.no_grad():
        return pixels, model(pixel_values=pixels).last_hidden_state


def as_input(u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> our input (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255 * 2 - 1


def smooth_images(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    wave = np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None] * np.array([1.0, 0.5, -0.7])
    return np.stack([127 + 120 * wave, 127 - 100 * wave]).astype(np.uint8)


# ---------------------------------------------------------------- the CLIP image encoder
def test_tokens_equal_the_model_on_the_processor_pixels(clip_dir, encoder):
    u8 = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pixels, expected = reference(clip_dir, u8)
    tokens = encoder(as_input(u8))
    assert tokens.shape == (3, 1 + 16, 32) == expected.shape and tokens.dtype == torch.float32
    assert encoder.num_tokens() == 17 and encoder.dim == 32
    assert (encoder.preprocess(as_input(u8)) - pixels).abs().max() < 1e-5  # the saved mean/std were read
    assert (tokens - expected).abs().max() < 1e-5
    # all last-layer tokens, before the post-LayerNorm: not the pooled output
    model = transformers.CLIPVisionModel.from_pretrained(str(clip_dir)).eval()
    with torch.no_grad():
        pooled = model(pixel_values=pixels).pooler_output
    assert (tokens[:, 0] - pooled).abs().max() > 1e-3


@pytest.mark.parametrize("h,w", [(48, 40), (40, 100), (20, 24), (200, 160)])
def test_resize_and_center_crop_follow_the_processor(clip_dir, encoder, h, w):
    """Shortest edge to 32 (bicubic, antialiased), center crop 32×32: as PIL does, up to its uint8 rounding."""
    u8 = smooth_images(h, w)
    pixels, _ = reference(clip_dir, u8)
    ours = encoder.preprocess(as_input(u8))
    assert ours.shape == pixels.shape == (2, 3, 32, 32)
    assert (ours - pixels).abs().max() < 0.03  # ~1.5 grey levels / std
    assert (ours - pixels).abs().mean() < 0.01


def test_batched_on_the_model_dtype_and_frozen(encoder):
    x = torch.rand(2, 3, 40, 36) * 2 - 1
    assert encoder(x).shape == (2, 17, 32)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training
    y = x.clone().requires_grad_(True)
    assert not encoder(y).requires_grad


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, 32, 32),
                                 torch.zeros(2, 1, 32, 32), torch.zeros(2, 4, 32, 32), torch.zeros(2, 32, 32, 3)])
def test_wrong_images_are_one_line_errors_naming_the_shape(encoder, bad):
    with pytest.raises(ValueError, match=r"float tensor of shape \(B, 3, H, W\)") as err:
        encoder(bad)
    assert "\n" not in str(err.value) and str(tuple(bad.shape)) in str(err.value)


def test_projection_model_full_clip_and_diffusers_layout(tmp_path, clip_dir):
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with_proj = save_vision(tmp_path / "proj", transformers.CLIPVisionModelWithProjection, seed=1)
    enc = CLIPImageEncoder(tmp_path / "proj")
    assert isinstance(enc.model, transformers.CLIPVisionModelWithProjection)
    with torch.no_grad():
        assert (enc(x) - with_proj(pixel_values=enc.preprocess(x)).last_hidden_state).abs().max() < 1e-5
    # a diffusers pipeline root: image_encoder/ with the processor in feature_extractor/
    root = tmp_path / "pipeline"
    shutil.copytree(clip_dir, root / "image_encoder")
    (root / "feature_extractor").mkdir()
    shutil.move(str(root / "image_encoder" / "preprocessor_config.json"), root / "feature_extractor")
    piped = CLIPImageEncoder(root)
    assert piped.preprocessor.mean == tuple(MEAN)
    assert torch.equal(piped(x), CLIPImageEncoder(clip_dir)(x))


def test_without_a_preprocessor_config_clip_defaults_at_the_model_size(tmp_path):
    save_vision(tmp_path / "bare", with_processor=False)
    enc = CLIPImageEncoder(tmp_path / "bare")
    assert enc.preprocessor.mean == CLIP_MEAN and enc.preprocessor.mode == "bicubic"
    assert enc(torch.zeros(1, 3, 64, 80)).shape == (1, 17, 32)


def test_factory_and_fingerprint(tmp_path, clip_dir):
    assert build_image_encoder("none") is None
    enc = build_image_encoder("clip", clip_dir)
    assert isinstance(enc, CLIPImageEncoder)
    with pytest.raises(ImageEncoderError, match=r"'dino'.*clip, none"):
        build_image_encoder("dino", clip_dir)
    with pytest.raises(ImageEncoderError, match="needs path"):
        build_image_encoder("clip")
    with pytest.raises(ImageEncoderError, match="not a local directory"):
        build_image_encoder("clip", tmp_path / "missing")
    fp = image_encoder_fingerprint(clip_dir)
    assert fp == enc.fingerprint == image_encoder_fingerprint(clip_dir) and len(fp) == 64
    copy = tmp_path / "copy"
    shutil.copytree(clip_dir, copy)
    assert image_encoder_fingerprint(copy) == fp  # content, not location
    cfg = json.loads((copy / "preprocessor_config.json").read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    (copy / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert image_encoder_fingerprint(copy) != fp  # the preprocessing is part of what the tokens mean
    save_vision(tmp_path / "other", seed=3)
    assert image_encoder_fingerprint(tmp_path / "other") != fp  # other weights


# ---------------------------------------------------------------- the Resampler
def naive_perceiver(attn: PerceiverAttention, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """The Perceiver attention written out per example and head, float64, explicit softmax."""
    def ln(y, norm):
        y = y.double()
        mu, var = y.mean(-1, keepdim=True), y.var(-1, unbiased=False, keepdim=True)
        return (y - mu) / torch.sqrt(var + norm.eps) * norm.weight.double() + norm.bias.double()

    wq, wkv, wo = (m.weight.detach().double() for m in (attn.to_q, attn.to_kv, attn.to_out))
    H, d = attn.heads, attn.dim_head
    outs = []
    for b in range(x.shape[0]):
        xs, ls = ln(x[b], attn.norm1), ln(latents[b], attn.norm2)
        both = torch.cat([xs, ls])  # keys and values: the tokens, then the latents
        q, k, v = ls @ wq.T, both @ wkv[:H * d].T, both @ wkv[H * d:].T
        heads = []
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            logits = q[:, s] @ k[:, s].T / math.sqrt(d)
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            heads.append(weights / weights.sum(dim=1, keepdim=True) @ v[:, s])
        outs.append(torch.cat(heads, dim=1) @ wo.T)
    return torch.stack(outs)


def randomize_norms(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))


def test_resampler_matches_a_naive_computation():
    torch.manual_seed(0)
    model = Resampler(dim=24, depth=2, dim_head=8, heads=3, num_queries=5, embedding_dim=20, output_dim=16, ff_mult=2)
    randomize_norms(model)
    tokens = torch.randn(2, 7, 20)
    with torch.no_grad():
        out = model(tokens)
        x = model.proj_in(tokens)  # (B, N, dim)
        latents = model.latents.expand(2, -1, -1).double()
        for attn, ff in model.layers:
            assert (attn(x, latents.float()).double() - naive_perceiver(attn, x, latents)).abs().max() < 1e-5
            latents = latents + naive_perceiver(attn, x, latents)
            norm, lin1, _, lin2 = ff
            h = torch.nn.functional.layer_norm(latents, (24,), norm.weight.double(), norm.bias.double(), norm.eps)
            latents = latents + torch.nn.functional.gelu(h @ lin1.weight.double().T) @ lin2.weight.double().T
        expected = torch.nn.functional.layer_norm(
            latents @ model.proj_out.weight.double().T + model.proj_out.bias.double(), (16,),
            model.norm_out.weight.double(), model.norm_out.bias.double(), model.norm_out.eps)
    assert out.shape == (2, 5, 16)
    assert (out.double() - expected).abs().max() < 1e-5


def test_resampler_is_invariant_to_the_token_order():
    torch.manual_seed(1)
    model = Resampler(dim=32, depth=2, dim_head=8, heads=4, num_queries=6, embedding_dim=12, output_dim=24)
    tokens = torch.randn(3, 11, 12)
    with torch.no_grad():
        out = model(tokens)
        shuffled = model(tokens[:, torch.randperm(11)])
        fewer = model(tokens[:, :5])
    assert (out - shuffled).abs().max() < 1e-5
    assert (out - fewer).abs().max() > 1e-3  # but not to which tokens there are
    assert (out[0] - out[1]).abs().max() > 1e-3  # and each example reads its own


def test_resampler_parameter_names_are_the_official_ones():
    model = Resampler(dim=16, depth=2, dim_head=4, heads=2, num_queries=3, embedding_dim=10, output_dim=12, ff_mult=4)
    official = {"latents": (1, 3, 16), "proj_in.weight": (16, 10), "proj_in.bias": (16,),
                "proj_out.weight": (12, 16), "proj_out.bias": (12,), "norm_out.weight": (12,), "norm_out.bias": (12,)}
    for i in range(2):
        official.update({f"layers.{i}.0.norm1.weight": (16,), f"layers.{i}.0.norm1.bias": (16,),
                         f"layers.{i}.0.norm2.weight": (16,), f"layers.{i}.0.norm2.bias": (16,),
                         f"layers.{i}.0.to_q.weight": (8, 16), f"layers.{i}.0.to_kv.weight": (16, 16),
                         f"layers.{i}.0.to_out.weight": (16, 8), f"layers.{i}.1.0.weight": (16,),
                         f"layers.{i}.1.0.bias": (16,), f"layers.{i}.1.1.weight": (64, 16),
                         f"layers.{i}.1.3.weight": (16, 64)})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    assert Resampler(dim=16, depth=1, dim_head=4, heads=2, num_queries=3, embedding_dim=10, output_dim=12,
                     video_length=4).latents.shape == (1, 12, 16)  # DynamiCrafter's queries per frame
    with pytest.raises(ValueError, match=r"\(B, N >= 1, embedding_dim=10\)"):
        model(torch.randn(2, 5, 11))
    with pytest.raises(ValueError, match="heads"):
        Resampler(heads=0)


# ---------------------------------------------------------------- the trainable patch encoder
def test_patch_encoder_shapes_and_errors():
    enc = PatchImageEncoder(channels=3, dim=32, patch=4, depth=2, heads=4)
    assert enc(torch.randn(2, 3, 16, 24)).shape == (2, 4 * 6, 32) and enc.num_tokens(16, 24) == 24
    assert PatchImageEncoder(3, 32, 4, 1, out_dim=24)(torch.randn(1, 3, 8, 8)).shape == (1, 4, 24)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        enc(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="patch=4"):
        enc(torch.randn(2, 3, 18, 16))
    with pytest.raises(ValueError, match="divisible"):
        PatchImageEncoder(3, 30, 4, 1)


def test_patch_encoder_trains_and_knows_where_things_are():
    """Tokens -> mean-pooled -> linear: learns the position of a bright square, which needs the positions."""
    torch.manual_seed(0)
    enc = PatchImageEncoder(channels=3, dim=32, patch=4, depth=2, heads=4)
    head = torch.nn.Linear(32, 2)
    g = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 12, (32, 2), generator=g)
    images = -torch.ones(32, 3, 16, 16)
    for i, (r, c) in enumerate(corners.tolist()):
        images[i, :, r:r + 4, c:c + 4] = 1.0
    target = corners.float() / 12 * 2 - 1
    opt = torch.optim.AdamW([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(head(enc(images).mean(1)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses[::10]
