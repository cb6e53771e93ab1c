"""VideoCrafter's image-to-video branch (models/videocrafter/, VideoCrafter1 §3, DynamiCrafter's hybrid): image tokens
from the given first frame (``image_encoder=latent``) or a frozen encoder (``tokens``) through the resampler into the
U-Net's dual cross-attention. Against the text-only model with the same weights: image_scale 0 is it exactly; an
example without an image (no frame 0 given, no or zero tokens, a joint batch's single images) is it exactly; the
frame reaches the output through the image branch; the untrained model is its spatial U-Net frame by frame; the
parameter groups; the config's refusals; a checkpoint round trip; training."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from moviola import Conditioning
from moviola.config import ConditionsConfig, ConfigError, VideoCrafterConfig, load_config, to_dict
from moviola.io.checkpoint import save_checkpoint
from moviola.models.loading import load_model
from moviola.models.videocrafter import VideoCrafter
from moviola.nn.unet import UNetAttention
from test_videocrafter import SMALL, TEXT, B, C, H, latents, perturb, run_cfg, spatial_part, text_cond

torch.set_num_threads(1)
T = 4
IMG = 10  # the frozen encoder's token width in tokens mode
# a small image branch: 4 queries, a 2-layer resampler of 2 heads × 8, a 1-layer patch encoder of width 8
BRANCH = dict(resampler_queries=4, resampler_depth=2, resampler_heads=2, resampler_head_channels=8,
              image_encoder_depth=1, image_encoder_heads=2, image_token_dim=8, image_patch=2)
LATENT = ConditionsConfig(text_channels=TEXT, context_frames=True)
TOKENS = ConditionsConfig(text_channels=TEXT, image=True)


def model(conditions: ConditionsConfig = LATENT, seed: int = 0, **switches) -> VideoCrafter:
    torch.manual_seed(seed)
    mode = "tokens" if conditions.image else "latent"
    branch = dict(BRANCH, image_token_dim=IMG) if mode == "tokens" else BRANCH
    return VideoCrafter(VideoCrafterConfig(**{**SMALL, "image_encoder": mode, **branch, **switches}), conditions, C)


def text_only(i2v: VideoCrafter) -> VideoCrafter:
    """The same network without its image branch (image_encoder none), with every shared weight of ``i2v``."""
    cfg = dataclasses.replace(i2v.config, image_encoder="none", **VideoCrafterConfig.IMAGE_KEYS)
    # without image_concat the given frames are no input of the U-Net: the text-only model then has no context frames
    conditions = dataclasses.replace(i2v.conditions, image=False, context_frames=i2v.concat_context)
    plain = VideoCrafter(cfg, conditions, C)
    shared = {k: v for k, v in i2v.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(shared, strict=True)  # every text-only weight exists in the I2V model, same shape
    return plain.eval()


def image_keys(m: VideoCrafter) -> set[str]:
    return {k for k in m.state_dict() if k.startswith(("image_encoder.", "image_proj_model."))
            or k.endswith(("to_k_ip.weight", "to_v_ip.weight", ".alpha"))}


def first_frame(x: torch.Tensor, given=(True, True), seed: int = 5, **kw) -> Conditioning:
    """Text, and frame 0 of each clip given where ``given`` says (a different latent from x_t's frame 0)."""
    m = torch.zeros(B, 1, x.shape[2], 1, 1)
    m[:, 0, 0] = torch.tensor(given, dtype=torch.float32)[:, None, None]
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return text_cond(context=z * m, context_mask=m, **kw)


def tokens(seed: int = 6, n: int = 7) -> torch.Tensor:
    return torch.randn(B, n, IMG, generator=torch.Generator().manual_seed(seed))


STEPS = torch.tensor([[5, 100, 400, 900], [999, 0, 30, 500]])


# ---------------------------------------------------------------------------------------- against the text-only model
@pytest.mark.parametrize("learnable", [False, True])
def test_image_scale_zero_is_the_text_only_model_exactly(learnable):
    i2v = perturb(model(image_scale=0.0, image_scale_learnable=learnable))
    x = latents(T)
    cond = first_frame(x)
    assert image_keys(i2v) and not image_keys(text_only(i2v))
    assert torch.equal(i2v(x, STEPS, cond), text_only(i2v)(x, STEPS, cond))
    on = perturb(model(image_scale_learnable=learnable))
    assert (on(x, STEPS, cond) - text_only(on)(x, STEPS, cond)).abs().max() > 1e-4  # at scale 1 it is not


def test_to_v_ip_starts_at_zero_so_the_untrained_branch_adds_nothing():
    i2v = model().eval()
    v_ip = [m.to_v_ip.weight for m in i2v.unet.modules() if isinstance(m, UNetAttention) and m.to_v_ip is not None]
    assert len(v_ip) == 7 and all(torch.equal(w, torch.zeros_like(w)) for w in v_ip)
    x = latents(T)
    assert torch.equal(i2v(x, STEPS, first_frame(x)), text_only(i2v)(x, STEPS, first_frame(x)))


@pytest.mark.parametrize("concat", [False, True], ids=["vc1_image_branch_only", "dynamicrafter_hybrid"])
def test_the_given_frame_reaches_the_output_through_the_image_branch(concat):
    i2v = perturb(model(image_concat=concat))
    assert i2v.unet.conv_in.in_channels == (2 * C + 1 if concat else C)
    x = latents(T)
    a, b = first_frame(x, seed=5), first_frame(x, seed=8)  # frame 0 differs
    assert (i2v(x, STEPS, a) - i2v(x, STEPS, b)).abs().max() > 1e-4
    for m in i2v.unet.modules():  # switch the image branch off: its values are zero
        if isinstance(m, UNetAttention) and m.to_v_ip is not None:
            torch.nn.init.zeros_(m.to_v_ip.weight)
    off_a, off_b = i2v(x, STEPS, a), i2v(x, STEPS, b)
    if concat:
        assert (off_a - off_b).abs().max() > 1e-4  # the concatenated channels still see it
    else:
        assert torch.equal(off_a, off_b)  # nothing else reads the frame


@pytest.mark.parametrize("concat", [False, True])
def test_an_example_without_a_given_frame_gets_no_image_contribution(concat):
    i2v = perturb(model(image_concat=concat))
    plain = text_only(i2v)
    x = latents(T)
    cond = first_frame(x, given=(True, False))  # clip 1: no frame given (training's context dropout)
    out, ref = i2v(x, STEPS, cond), plain(x, STEPS, cond) if concat else plain(x, STEPS, text_cond())
    assert torch.equal(out[1], ref[1])
    assert (out[0] - ref[0]).abs().max() > 1e-4
    null = cond.null(["context"])  # what guidance compares against: no frame anywhere
    assert torch.equal(i2v(x, STEPS, null), plain(x, STEPS, null if concat else text_cond()))
    assert torch.equal(i2v(x, STEPS, text_cond()), plain(x, STEPS, text_cond()))  # no context passed at all


def test_the_single_images_of_a_joint_batch_hear_no_image():
    """The trailing num_images frames are other clips' frames: the clip's given first frame is not their image."""
    i2v = perturb(model())
    x = latents(6)
    cond = first_frame(x)
    out, ref = i2v(x, torch.tensor([50, 700]), cond, num_images=2), text_only(i2v)(x, torch.tensor([50, 700]), cond,
                                                                                    num_images=2)
    assert torch.equal(out[:, :, 4:], ref[:, :, 4:])
    assert (out[:, :, :4] - ref[:, :, :4]).abs().max() > 1e-4


def test_image_tokens_condition_the_model_and_missing_or_zero_tokens_are_the_null_image():
    i2v = perturb(model(TOKENS))
    assert "image_tokens" in i2v.accepts and i2v.image_encoder is None
    assert i2v.image_proj_model.embedding_dim == IMG and i2v.image_proj_model.output_dim == TEXT
    plain = text_only(i2v)
    x = latents(T)
    cond = text_cond(image_tokens=tokens())
    out, ref = i2v(x, STEPS, cond), plain(x, STEPS, text_cond())
    assert ((out - ref).flatten(1).abs().amax(1) > 1e-4).all()
    assert (i2v(x, STEPS, text_cond(image_tokens=tokens(seed=9))) - out).abs().max() > 1e-4
    assert torch.equal(i2v(x, STEPS, text_cond()), ref)  # no tokens: the null image
    assert torch.equal(i2v(x, STEPS, cond.null(["image_tokens"])), ref)  # zeros (Conditioning.null)
    dropped = cond.drop(torch.tensor([True, False]), ["image_tokens"])  # training's image dropout
    mixed = i2v(x, STEPS, dropped)
    assert torch.equal(mixed[1], ref[1]) and (mixed[0] - ref[0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"image_tokens must have shape \(B, L, model.image_token_dim\)"):
        i2v(x, STEPS, text_cond(image_tokens=torch.randn(B, 7, IMG + 1)))
    with pytest.raises(ValueError, match="does not accept conditioning field.*image_tokens"):
        model()(x, STEPS, first_frame(x, image_tokens=tokens()))


# ---------------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("conditions", [LATENT, TOKENS], ids=["latent", "tokens"])
def test_the_untrained_model_is_its_spatial_unet_frame_by_frame_with_the_image_branch(conditions):
    i2v = perturb(model(conditions, relative_position=True, temporal_self_attention_only=False,
                        image_scale_learnable=True), "spatial")
    x = latents(T)
    cond = first_frame(x) if conditions.context_frames else text_cond(image_tokens=tokens())
    out = i2v(x, STEPS, cond)
    assert (out - text_only(i2v)(x, STEPS, cond if conditions.context_frames else text_cond())).abs().max() > 1e-4
    torch.testing.assert_close(out, spatial_part(i2v)(x, STEPS, cond), rtol=0, atol=1e-6)
    perturb(i2v, "temporal")
    assert (i2v(x, STEPS, cond) - out).abs().max() > 1e-3


def test_the_image_branch_is_spatial():
    i2v = model(image_scale_learnable=True)
    names = {id(p): n for n, p in i2v.named_parameters()}
    branch = {n for n in names.values() if n.startswith(("image_encoder.", "image_proj_model."))
              or n.endswith(("to_k_ip.weight", "to_v_ip.weight", ".alpha"))}
    assert any(n.startswith("image_encoder.") for n in branch) and any(n.startswith("image_proj_model.") for n in branch)
    assert sum(n.endswith(".alpha") for n in branch) == 7  # one gate per image attention (down 2, mid 1, up 4)
    spatial = {names[id(p)] for p in i2v.parameter_groups("spatial")}
    temporal = {names[id(p)] for p in i2v.parameter_groups("temporal")}
    assert branch <= spatial and not branch & temporal
    assert temporal == {n for n in names.values() if any(k in n for k in ("temp_convs", "temp_attentions",
                                                                             "transformer_in"))}


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("extra, words", [
    (["model.image_encoder=latent", "conditions.context_frames=true"], ["model.image_encoder=latent",
                                                                         "conditions.text_channels"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}"], ["model.image_encoder=latent",
                                                                          "conditions.context_frames"]),
    (["model.image_encoder=tokens", f"conditions.text_channels={TEXT}", "model.image_token_dim=10"],
     ["model.image_encoder=tokens", "conditions.image"]),
    (["model.image_encoder=tokens", f"conditions.text_channels={TEXT}", "conditions.image=true"],
     ["model.image_token_dim", "1280"]),
    ([f"conditions.text_channels={TEXT}", "conditions.image=true"], ["conditions.image", "model.image_encoder=tokens"]),
    (["model.image_scale=0.5", f"conditions.text_channels={TEXT}"], ["model.image_scale", "model.image_encoder"]),
    (["model.image_concat=false", "conditions.context_frames=true"], ["model.image_concat", "model.image_encoder"]),
    (["model.image_encoder=tokens", f"conditions.text_channels={TEXT}", "conditions.image=true",
      "model.image_token_dim=10", "model.image_concat=false"], ["model.image_concat=false", "latent"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}", "conditions.context_frames=true",
      "model.image_token_dim=6"], ["model.image_token_dim=6", "4"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}", "conditions.context_frames=true",
      "model.image_token_dim=12", "model.image_encoder_heads=8"], ["model.image_token_dim=12",
                                                                  "model.image_encoder_heads=8"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}", "conditions.context_frames=true",
      "model.image_patch=3"], ["model.image_patch=3", "data.size=32"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}", "conditions.context_frames=true",
      "model.resampler_queries=0"], ["model.resampler_queries"]),
    (["model.image_encoder=latent", f"conditions.text_channels={TEXT}", "conditions.context_frames=true",
      "model.image_scale=-1"], ["model.image_scale"]),
    (["model.image_encoder=clip"], ["model.image_encoder", "clip"]),
])
def test_bad_image_configs_are_one_line_errors_naming_the_key(extra, words):
    with pytest.raises(ConfigError) as e:
        run_cfg(*extra)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_building_the_model_directly_checks_the_same_rules():
    with pytest.raises(ConfigError, match="model.image_encoder=latent.*conditions.text_channels"):
        VideoCrafter(VideoCrafterConfig(**SMALL, image_encoder="latent"), ConditionsConfig(context_frames=True), C)
    with pytest.raises(ConfigError, match="conditions.context_frames"):
        VideoCrafter(VideoCrafterConfig(**SMALL, image_encoder="latent"), ConditionsConfig(text_channels=TEXT), C)


# ---------------------------------------------------------------------------------------- checkpoint, training
@pytest.mark.parametrize("mode", ["latent", "tokens"])
def test_an_image_to_video_model_round_trips_through_a_checkpoint(tmp_path, mode):
    branch = dict(BRANCH, image_token_dim=IMG) if mode == "tokens" else BRANCH
    cfg = run_cfg(*(f"model.{k}={v}" for k, v in branch.items()), f"model.image_encoder={mode}",
                  "model.image_scale_learnable=true", "model.image_scale=0.7", f"conditions.text_channels={TEXT}",
                  "conditions.fps=true", "data.size=8",
                  # a new tokens config names its encoder (the directory is read only to encode images)
                  *(["conditions.image=true", "conditions.context_frames=true", "image.encoder=clip-vision"]
                    if mode == "tokens" else
                    ["conditions.context_frames=true", "model.image_concat=false"]))
    torch.manual_seed(0)
    i2v = perturb(VideoCrafter.from_config(cfg.model, cfg.conditions, C))
    path = save_checkpoint(tmp_path / "checkpoints", 1, to_dict(cfg), i2v, i2v)
    loaded = load_model(path)
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(cfg.model) and image_keys(loaded)
    x = latents(T)
    cond = first_frame(x, fps=torch.tensor([8.0, 3.0]), **({"image_tokens": tokens()} if mode == "tokens" else {}))
    out = i2v(x, STEPS, cond)
    assert torch.equal(loaded(x, STEPS, cond), out)
    if mode == "tokens":  # hybrid: the given frames are concatenated as well
        assert loaded.unet.conv_in.in_channels == 2 * C + 1
        assert not torch.equal(loaded(x, STEPS, dataclasses.replace(cond, image_tokens=tokens(seed=9))), out)
    else:
        assert loaded.unet.conv_in.in_channels == C
        assert not torch.equal(loaded(x, STEPS, first_frame(x, seed=8, fps=cond.fps)), out)


def test_training_with_a_given_frame_reduces_the_loss_and_trains_the_image_branch():
    """The target is the given frame's latent moved by one pixel per frame: learnable from frame 0 alone."""
    i2v = model(image_concat=False).train()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, C, T, H, H, generator=g)
    m = torch.zeros(B, 1, T, 1, 1)
    m[:, :, 0] = 1
    cond = text_cond(context=z * m, context_mask=m)
    target = torch.stack([z[:, :, 0].roll(i, dims=-1) for i in range(T)], dim=2)
    x = torch.randn(B, C, T, H, H, generator=g)
    opt = torch.optim.Adam(i2v.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = (i2v(x, torch.tensor([10, 600]), cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    branch = [p for n, p in i2v.named_parameters() if n.startswith(("image_encoder.", "image_proj_model."))
              or n.endswith(("to_k_ip.weight", "to_v_ip.weight"))]
    assert branch and all(p.grad is not None and p.grad.abs().max() > 0 for p in branch)
