"""Video LDM (models/video_ldm/): the untrained video model is the image model frame by frame; α = 1 recovers
it after training; image frames of a joint batch bypass every temporal layer; the ±k temporal window; given
frames reach only the temporal layers; the temporal stage leaves the spatial weights bitwise unchanged; the
tiny model's contract (shape, checkpoint round trip, determinism, per-frame t); every temporal switch trains;
the config's one-line errors."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from moviola import Conditioning
from moviola.config import ConditionsConfig, ConfigError, VideoLDMConfig, load_config, to_dict
from moviola.io.checkpoint import save_checkpoint
from moviola.models.loading import load_model
from moviola.models.video_ldm import VideoLDM
from moviola.training.trainer import Trainer

torch.set_num_threads(1)
B, C, H = 2, 3, 8  # 3 channels: a pixel-space (identity autoencoder) run, as load_model builds it
TEXT = 6
SMALL = dict(block_out_channels=(16, 32), layers_per_block=1, num_heads=2, norm_num_groups=8,
             temporal_head_channels=8)


def vldm(conditions: ConditionsConfig = ConditionsConfig(text_channels=TEXT), seed: int = 0, **model) -> VideoLDM:
    torch.manual_seed(seed)
    return VideoLDM(VideoLDMConfig(**{**SMALL, **model}), conditions, C)


def perturb(model: VideoLDM, which: str = "all", scale: float = 0.1, seed: int = 1) -> VideoLDM:
    """Move weights off their initialization ('spatial', 'temporal' or 'all'): zero-initialized layers make
    many comparisons trivially equal."""
    g = torch.Generator().manual_seed(seed)
    temporal = {id(p) for p in model.parameter_groups("temporal")}
    with torch.no_grad():
        for p in model.parameters():
            if which == "all" or (id(p) in temporal) == (which == "temporal"):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def image_model(video: VideoLDM) -> VideoLDM:
    """The same network without temporal layers, holding the video model's spatial weights."""
    image = VideoLDM(dataclasses.replace(video.config, temporal_layers="none"),
                     dataclasses.replace(video.conditions, context_frames=False), C)
    image.load_state_dict({k: v for k, v in video.state_dict().items() if k in image.state_dict()}, strict=True)
    return image.eval()


def latents(T=4, seed=2):
    return torch.randn(B, C, T, H, H, generator=torch.Generator().manual_seed(seed))


def text_cond(seed=3, **kw):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return Conditioning(text=torch.randn(B, 5, TEXT, generator=g), text_mask=mask, **kw)


def per_frame(image: VideoLDM, x, t, cond):
    """The image model on each frame alone (a one-frame video), stacked back along time."""
    t = t[:, None].expand(-1, x.shape[2]) if t.dim() == 1 else t
    return torch.cat([image(x[:, :, i:i + 1], t[:, i], cond) for i in range(x.shape[2])], dim=2)


# ---------------------------------------------------------------------------------------- image model
def test_the_untrained_video_model_is_the_image_model_frame_by_frame():
    video = perturb(vldm(), "spatial")
    x, t, cond = latents(), torch.tensor([[5, 100, 400, 900], [999, 0, 30, 500]]), text_cond()
    out, image = video(x, t, cond), image_model(video)
    torch.testing.assert_close(out, image(x, t, cond), rtol=0, atol=1e-6)  # the same frame batch, no temporal layers
    torch.testing.assert_close(out, per_frame(image, x, t, cond), rtol=1e-5, atol=1e-5)  # each frame alone (batching noise)


def test_alpha_one_recovers_the_image_model_after_the_temporal_layers_learned():
    video = perturb(vldm())  # temporal weights moved: the video model now mixes frames
    x, t, cond = latents(), torch.tensor([50, 700]), text_cond()
    image_out = per_frame(image_model(video), x, t, cond)
    assert (video(x, t, cond) - image_out).abs().max() > 1e-3
    mixes = [m for name, m in video.named_modules() if name.endswith(".mix")]
    assert len(mixes) == 8 + 7  # a conv block after each of 2 + 2 + 4 resnets, an attention after 2 + 1 + 4 transformers
    with torch.no_grad():
        for m in mixes:
            m.mix_logit.fill_(float("inf"))  # α = sigmoid(inf) = 1
    torch.testing.assert_close(video(x, t, cond), image_model(video)(x, t, cond), rtol=0, atol=1e-6)


def test_image_frames_of_a_joint_batch_bypass_every_temporal_layer():
    video = perturb(vldm())
    x, t, cond = latents(T=6), torch.tensor([50, 700]), text_cond()
    out = video(x, t, cond, num_images=2)
    image = image_model(video)
    torch.testing.assert_close(out[:, :, 4:], image(x, t, cond)[:, :, 4:], rtol=0, atol=1e-6)
    y = x.clone()
    y[:, :, 5] = torch.randn_like(y[:, :, 5])  # another second image
    assert torch.equal(video(y, t, cond, num_images=2)[:, :, :5], out[:, :, :5])
    torch.testing.assert_close(out[:, :, :4], video(x[:, :, :4], t, cond), rtol=0, atol=1e-6)  # the video alone
    assert (video(x, t, cond, num_images=0)[:, :, :4] - out[:, :, :4]).abs().max() > 1e-4  # as video, they mix


def test_the_temporal_window_limits_how_far_a_frame_reaches():
    """Attention-only temporal layers (7 of them) with window k: frame j reaches frame i only if |i − j| ≤ 7k."""
    x, t, cond = latents(T=10), torch.tensor([50, 700]), text_cond()
    y = x.clone()
    y[:, :, 0] = torch.randn_like(y[:, :, 0])
    for k, reached in ((0, [0]), (1, list(range(8)))):
        video = perturb(vldm(temporal_layers="attention", temporal_window=k))
        changed = (video(y, t, cond) - video(x, t, cond)).abs().amax(dim=(0, 1, 3, 4))  # (T,)
        assert [i for i in range(10) if changed[i] > 0] == reached, (k, changed)
    video = perturb(vldm(temporal_layers="attention", temporal_window=None))
    assert ((video(y, t, cond) - video(x, t, cond)).abs().amax(dim=(0, 1, 3, 4)) > 0).all()


def test_given_frames_reach_only_the_temporal_layers():
    conditions = ConditionsConfig(text_channels=TEXT, context_frames=True)
    video = perturb(vldm(conditions), "spatial")
    assert video.unet.conv_in.weight.shape[1] == C  # the image backbone's input is x_t alone
    x, t = latents(), torch.tensor([50, 700])
    m = torch.zeros(B, 1, 4, 1, 1)
    m[:, :, 0] = 1
    given, none = text_cond(context=latents(seed=9) * m, context_mask=m), text_cond()
    assert torch.equal(video(x, t, given), video(x, t, none))  # zero-initialized: no influence yet
    perturb(video, "temporal")
    assert (video(x, t, given) - video(x, t, none)).abs().max() > 1e-4
    assert all(p.requires_grad for p in video.context_pyramid.parameters())
    temporal = {id(p) for p in video.parameter_groups("temporal")}
    assert all(id(p) in temporal for p in video.context_pyramid.parameters())


# ---------------------------------------------------------------------------------------- contract
def test_shape_learned_sigma_per_frame_t_and_determinism():
    model = perturb(vldm(learned_sigma=True))
    x, cond = latents(), text_cond()
    out = model(x, torch.tensor([3, 700]), cond)
    assert out.shape == (B, 2 * C, 4, H, H)
    assert torch.equal(model(x, torch.tensor([3, 700]), cond), out)
    assert torch.equal(perturb(vldm(learned_sigma=True))(x, torch.tensor([3, 700]), cond), out)
    per = model(x, torch.tensor([[3] * 4, [700] * 4]), cond)
    torch.testing.assert_close(per, out, rtol=0, atol=1e-6)  # (B,) is (B, T) broadcast
    assert not torch.allclose(model(x, torch.tensor([[3, 3, 3, 500], [700] * 4]), cond), out)


def test_a_tiny_model_with_every_condition_round_trips_through_a_checkpoint(tmp_path):
    cfg = load_config(overrides=["model.family=video_ldm", "model.block_out_channels=[16,32]",
                                 "model.layers_per_block=1", "model.num_heads=2", "model.norm_num_groups=8",
                                 "model.temporal_head_channels=8", "data.size=8", "data.frames=4",
                                 "conditions.num_classes=5", f"conditions.text_channels={TEXT}",
                                 "conditions.context_frames=true", "conditions.low_res=true",
                                 "conditions.noise_level=true"])
    torch.manual_seed(0)
    model = perturb(VideoLDM.from_config(cfg.model, cfg.conditions, C))
    path = save_checkpoint(tmp_path / "checkpoints", 1, to_dict(cfg), model, model)
    loaded = load_model(path)
    x = latents()
    m = torch.zeros(B, 1, 4, 1, 1)
    m[:, :, 0] = 1
    cond = text_cond(labels=torch.tensor([1, -1]), context=x * m, context_mask=m,
                     low_res=torch.randn(B, C, 4, 4, 4), noise_level=torch.tensor([0.0, 200.0]))
    assert torch.equal(loaded(x, torch.tensor([10, 20]), cond), model(x, torch.tensor([10, 20]), cond))
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(cfg.model)
    assert loaded.accepts == {"labels", "text", "text_mask", "context", "context_mask", "low_res", "noise_level"}
    for field, value in (("low_res", torch.randn(B, C, 4, 2, 2)), ("noise_level", torch.tensor([50.0, 1.0])),
                         ("labels", torch.tensor([2, 2]))):
        assert not torch.equal(model(x, torch.tensor([10, 20]), dataclasses.replace(cond, **{field: value})),
                               model(x, torch.tensor([10, 20]), cond)), field


def test_missing_and_unaccepted_conditions_are_named():
    model = vldm()
    x, t = latents(), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="text-conditioned"):
        model(x, t)
    with pytest.raises(ValueError, match="labels"):
        model(x, t, text_cond(labels=torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="num_images=4"):
        model(x, t, text_cond(), num_images=4)


@pytest.mark.parametrize("layers, mix", list(itertools.product(["conv_attention", "attention", "conv"],
                                                                ["learned", "fixed"])))
def test_every_temporal_switch_trains(layers, mix):
    model = vldm(temporal_layers=layers, temporal_mix=mix).train()
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(B, C, 3, H, H, generator=g), torch.randn(B, C, 3, H, H, generator=g)
    cond, t = text_cond(), torch.tensor([10, 600])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = (model(x, t, cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    mixes = [m for n, m in model.named_modules() if n.endswith(".mix")]
    assert mixes and all(isinstance(getattr(m, "mix_logit", None), torch.nn.Parameter) == (mix == "learned")
                         for m in mixes)


# ---------------------------------------------------------------------------------------- two stages
def run_cfg(*extra: str):
    return load_config(overrides=["name=vldm", "model.family=video_ldm", "model.block_out_channels=[16,32]",
                                  "model.layers_per_block=1", "model.num_heads=2", "model.norm_num_groups=8",
                                  "model.temporal_head_channels=8", "conditions.num_classes=48", "data.size=32",
                                  "data.frames=4", "data.count=8", "train.batch_size=2", "train.steps=2",
                                  "train.checkpoint_every=1000", "train.device=cpu", "train.precision=fp32",
                                  "train.lr=1e-2", "sample.steps=2", *extra])


def test_the_temporal_stage_leaves_every_spatial_weight_bitwise_unchanged(tmp_path):
    trainer = Trainer(run_cfg("train.stage=temporal"), tmp_path / "run", quiet=True)
    model = trainer.task.raw_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    temporal = [k for k in after if any(f".{p}." in f".{k}" for p in ("temp_convs", "temp_attentions"))]
    assert temporal and any(not torch.equal(after[k], before[k]) for k in temporal)
    assert all(torch.equal(after[k], before[k]) for k in after if k not in temporal)


def test_the_spatial_stage_trains_the_image_model_only(tmp_path):
    trainer = Trainer(run_cfg("train.stage=spatial", "data.frames=1"), tmp_path / "run", quiet=True)
    model = trainer.task.raw_model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.train()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and not any("temp_" in k for k in changed)
    assert "unet.conv_in.weight" in changed


# ---------------------------------------------------------------------------------------- config errors
@pytest.mark.parametrize("extra, words", [
    (["model.attention_resolutions=[1,8]"], ["model.attention_resolutions", "[8]", "[1, 2]"]),
    (["model.block_out_channels=[20,40]"], ["20", "model.norm_num_groups=8"]),
    (["model.head_channels=8"], ["model.num_heads", "model.head_channels"]),
    (["model.num_heads=3"], ["16", "3 heads"]),
    (["model.alpha_init=1.0"], ["model.alpha_init", "fixed"]),
    (["model.block_out_channels=[16,16,16,16,16,16,16]"], ["data.size=32", "64"]),
    (["model.size=sd3"], ["model.size", "sd15"]),
    (["conditions.noise_level=true"], ["conditions.noise_level", "conditions.low_res"]),
    (["model.temporal_layers=both"], ["model.temporal_layers"]),
    (["model.temporal_layers=none", "conditions.context_frames=true"], ["conditions.context_frames",
                                                                       "model.temporal_layers=none"]),
])
def test_bad_configs_are_one_line_errors_before_any_compute(extra, words):
    with pytest.raises(ConfigError) as e:
        run_cfg(*extra)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# ---------------------------------------------------------------------------------------- interpolation levels
def test_the_rate_flag_is_the_interpolation_level_and_starts_as_nothing():
    """Video LDM's interpolation model does T -> 4T and 4T -> 16T with one set of weights and a flag for the
    level: here the clips' frame rate (conditions.fps; trained on strides 4 and 1). Its embedding starts at
    zero (the model is the one without it), then the two levels give different outputs; it trains in the
    temporal stage (it is new with the temporal layers)."""
    keyframes = ConditionsConfig(text_channels=TEXT, context_frames=True, context_mode="keyframes")
    plain = perturb(vldm(keyframes))
    flagged = vldm(dataclasses.replace(keyframes, fps=True))
    missing = flagged.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("fps_embedding.") for k in missing)
    flagged.eval()
    x, t = latents(T=5), torch.tensor([10, 700])
    m = torch.zeros(B, 1, 5, 1, 1)
    m[:, :, ::4] = 1  # keyframes 0 and 4
    cond = text_cond(context=x * m, context_mask=m)
    level = {rate: dataclasses.replace(cond, fps=torch.full((B,), rate)) for rate in (2.0, 8.0)}
    assert torch.equal(flagged(x, t, level[2.0]), plain(x, t, cond))
    with torch.no_grad():
        for p in flagged.fps_embedding.parameters():
            p.normal_(0, 0.1)
    assert not torch.allclose(flagged(x, t, level[2.0]), flagged(x, t, level[8.0]), atol=1e-4)
    temporal = {id(p) for p in flagged.parameter_groups("temporal")}
    assert all(id(p) in temporal for p in flagged.fps_embedding.parameters())
    with pytest.raises(ValueError, match="conditions.fps"):
        flagged(x, t, cond)


def test_training_an_interpolation_model_draws_both_levels_and_gives_the_keyframes(tmp_path):
    cfg = run_cfg("conditions.context_frames=true", "conditions.context_mode=keyframes", "conditions.context_dropout=0",
                  "conditions.fps=true", "data.frames=5", "data.frame_strides=[1,4]", "data.fps=8",
                  "train.batch_size=8", "data.count=16")
    task = Trainer(cfg, tmp_path / "run", quiet=True).task
    x0, cond, *_ = task.make_batch(0)
    assert set(cond.fps.tolist()) == {8.0, 2.0}  # both levels in one batch of 8 (a stride drawn per clip)
    assert torch.equal(cond.context_mask[:, 0, :, 0, 0], torch.tensor([1.0, 0, 0, 0, 1]).expand(8, 5))
    assert torch.equal(cond.context, x0 * cond.context_mask)
