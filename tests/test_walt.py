"""W.A.L.T (models/walt/): the paper's parameter counts, the tiny model's contract (shape, checkpoint
round trip, determinism, per-frame t, zero at init), joint-training images, self-conditioning, the
super-resolution and text inputs, every switch training a few steps, the config's one-line errors, and
running at another latent size (aspect ratio)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from moviola import Conditioning
from moviola.config import ConditionsConfig, ConfigError, LatteConfig, WaltConfig, load_config, to_dict
from moviola.io.checkpoint import save_checkpoint
from moviola.models.latte import Latte
from moviola.models.loading import load_model
from moviola.models.walt import Walt
from moviola.nn import with_context

torch.set_num_threads(1)
B, C = 2, 3

Cond = Conditioning


def walt(conditions: ConditionsConfig = ConditionsConfig(), seed: int = 0, **model) -> Walt:
    cfg = WaltConfig(**{"hidden_size": 16, "depth": 2, "num_heads": 2, "pos_grid": (3, 4, 4), **model})
    torch.manual_seed(seed)
    return Walt(cfg, conditions, C)


def perturb(model: Walt, scale: float = 0.2, seed: int = 1) -> Walt:
    """Move every weight off its initialization (zeroed layers make many comparisons trivially equal)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def latents(T=3, H=4, W=4, seed=2):
    return torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------- the paper's sizes
def parameters_on_meta(**model) -> int:
    cfg = WaltConfig(pos_grid=(5, 16, 16), **model)  # UCF-101: 17×128×128 -> 5×16×16×8 latents, p = 1
    with torch.device("meta"):  # no memory: the count only
        m = Walt(cfg, ConditionsConfig(num_classes=101, self_cond=0.9), in_channels=8)
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("model, paper", [(dict(size="L", adaln="lora", adaln_lora_rank=2), 313e6),
                                          (dict(size="L", adaln="separate"), 458e6),
                                          (dict(size="XL", adaln="lora", adaln_lora_rank=2), 460e6)])
def test_the_parameter_counts_of_the_paper(model, paper):
    """Table 3/4/8: class-conditional W.A.L.T-L is 313 M with AdaLN-LoRA r = 2 and 458 M with separate
    adaLN; XL with LoRA-2 is 460 M."""
    n = parameters_on_meta(**model)
    assert abs(n - paper) / paper < 0.03, f"{n / 1e6:.1f} M vs the paper's {paper / 1e6:.0f} M"
    assert round(n / 1e6) == paper / 1e6  # in fact to the million


@pytest.mark.parametrize("rank, paper", [(2, 313), (4, 314), (16, 316), (64, 324), (256, 357)])
def test_the_rank_ablation_to_the_million(rank, paper):
    """Table 3's rank ablation, 313 / 314 / 316 / 324 / 357 M, to the rounding: one rank-r update
    (W_a: d -> r, W_b: r -> 6d, 7·d·r parameters) in every one of L's 24 layers."""
    n = parameters_on_meta(size="L", adaln_lora_rank=rank)
    assert round(n / 1e6) == paper, n
    assert n - parameters_on_meta(size="L", adaln_lora_rank=1) == 24 * 7 * 1024 * (rank - 1)


# ---------------------------------------------------------------------------------------- the tiny model
def test_the_untrained_model_outputs_zero():
    model = walt(ConditionsConfig(num_classes=5, text_channels=6, self_cond=0.9), text_pooled=True)
    cond = Conditioning(labels=torch.tensor([1, -1]), text=torch.randn(B, 4, 6))
    out = model(latents(), torch.tensor([10, 500]), cond)
    assert out.shape == (B, C, 3, 4, 4) and torch.equal(out, torch.zeros_like(out))


def test_shape_learned_sigma_and_determinism():
    model = perturb(walt(learned_sigma=True, patch_size=2))
    x, t = latents(), torch.tensor([3, 700])
    out = model(x, t)
    assert out.shape == (B, 2 * C, 3, 4, 4)
    assert torch.equal(model(x, t), out)
    assert torch.equal(perturb(walt(learned_sigma=True, patch_size=2))(x, t), out)  # same seed, same model


def test_a_tiny_model_with_every_condition_round_trips_through_a_checkpoint(tmp_path):
    cfg = load_config(overrides=["model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
                                 "model.pos_grid=[3,4,4]", "model.spatiotemporal_window=[3,2,2]",
                                 "model.text_pooled=true", "model.text_in_stw=true", "data.size=4", "data.frames=3",
                                 "conditions.num_classes=5", "conditions.text_channels=6",
                                 "conditions.context_frames=true", "conditions.self_cond=0.9",
                                 "conditions.low_res=true", "conditions.noise_level=true"])
    torch.manual_seed(0)
    model = perturb(Walt.from_config(cfg.model, cfg.conditions, C))
    path = save_checkpoint(tmp_path / "checkpoints", 1, to_dict(cfg), model, model)
    loaded = load_model(path)
    x = latents()
    m = torch.zeros(B, 1, 3, 1, 1)
    m[:, :, 0] = 1
    cond = Cond(labels=torch.tensor([1, 2]), text=torch.randn(B, 4, 6), text_mask=torch.ones(B, 4, dtype=bool),
                context=x * m, context_mask=m, self_cond=torch.randn_like(x),
                low_res=torch.randn(B, C, 3, 2, 2), noise_level=torch.tensor([0.0, 200.0]))
    assert torch.equal(loaded(x, torch.tensor([10, 20]), cond), model(x, torch.tensor([10, 20]), cond))
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(cfg.model)
    assert loaded.accepts == {"labels", "text", "text_mask", "context", "context_mask", "self_cond", "low_res",
                              "noise_level"}


def test_a_timestep_per_frame():
    model = perturb(walt())
    x = latents()
    same = model(x, torch.tensor([[40] * 3, [600] * 3]))
    torch.testing.assert_close(same, model(x, torch.tensor([40, 600])))
    varied = model(x, torch.tensor([[0, 40, 80], [600, 600, 900]]))
    assert not torch.allclose(varied, same)
    with pytest.raises(ValueError, match="timesteps must have shape"):
        model(x, torch.zeros(B, 2))


def test_fields_the_model_does_not_take_are_named():
    model = walt(ConditionsConfig(num_classes=5))
    with pytest.raises(ValueError, match="self_cond"):
        model(latents(), torch.tensor([1, 2]), Conditioning(labels=torch.tensor([0, 1]), self_cond=latents()))
    with pytest.raises(ValueError, match="labels"):
        model(latents(), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="image"):
        Walt(WaltConfig(pos_grid=(3, 4, 4)), ConditionsConfig(image=True), C)


def test_parameter_groups_are_the_spatiotemporal_layers_and_the_rest():
    model = walt(ConditionsConfig(text_channels=6), depth=4, text_in_stw=True)
    temporal = {id(p) for p in model.parameter_groups("temporal")}
    stw = {id(p) for b in model.blocks for p in b.spatiotemporal.parameters()}
    assert temporal == stw
    assert {id(p) for p in model.parameter_groups("spatial")} == {id(p) for p in model.parameters()} - stw


# ---------------------------------------------------------------------------------------- joint images
@pytest.mark.parametrize("text_in_stw", [False, True])
def test_image_frames_see_neither_the_video_nor_each_other(text_in_stw):
    """SW attends within a frame and STW gives images the identity mask (and no text attention): an image
    frame's output depends on that frame (and the text) alone."""
    model = perturb(walt(ConditionsConfig(text_channels=6), spatiotemporal_window=(3, 2, 2), text_in_stw=text_in_stw))
    x = latents(T=5)  # 3 video frames, then 2 images
    t = torch.tensor([[5, 5, 5, 9, 9], [700, 700, 700, 30, 30]])
    text = Conditioning(text=torch.randn(B, 4, 6))
    out = model(x, t, text, num_images=2)
    y = x.clone()
    y[:, :, :3] = torch.randn_like(y[:, :, :3])  # other video
    y[:, :, 4] = torch.randn_like(y[:, :, 4])  # another second image
    out_y = model(y, t, text, num_images=2)
    torch.testing.assert_close(out_y[:, :, 3], out[:, :, 3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out_y[:, :, :3], out[:, :, :3])


def test_an_image_frame_takes_the_first_frames_temporal_embedding():
    model = perturb(walt())
    pos = model.positions(5, 3, 4, 4)  # (T, h, w, D)
    for frame in (3, 4):
        torch.testing.assert_close(pos[frame], model.pos_embed_spatial + model.pos_embed_temporal[0])
    torch.testing.assert_close(pos[2], model.pos_embed_spatial + model.pos_embed_temporal[2])


# ---------------------------------------------------------------------------------------- inputs
def test_a_self_conditioned_model_given_no_estimate_sees_zeros():
    model = perturb(walt(ConditionsConfig(self_cond=0.9)))
    x, t = latents(), torch.tensor([100, 800])
    none = model(x, t)
    assert torch.equal(none, model(x, t, Conditioning(self_cond=torch.zeros_like(x))))
    assert torch.equal(none, model(x, t, Conditioning()))
    assert not torch.allclose(none, model(x, t, Conditioning(self_cond=torch.randn_like(x))))
    with pytest.raises(ValueError, match="self_cond"):
        model(x, t, Conditioning(self_cond=torch.zeros(B, C, 3, 2, 2)))


def test_super_resolution_inputs():
    model = perturb(walt(ConditionsConfig(low_res=True, noise_level=True)))
    x, t = latents(), torch.tensor([100, 800])
    low = torch.randn(B, C, 3, 2, 2)
    up = model.low_res_upsample(low)
    assert up.shape == (B, C, 3, 4, 4)
    # depth-to-space: output pixel (2i + a, 2j + b) of channel c is conv channel 4c + 2a + b at (i, j)
    conv = model.low_res_upsample.proj(low[:, :, 1])  # (B, 4C, 2, 2)
    torch.testing.assert_close(up[:, 1, 1, 3, 2], conv[:, 4 + 2 * 1 + 0, 1, 1])
    out = model(x, t, Cond(low_res=low, noise_level=torch.tensor([0.0, 0.0])))
    assert torch.equal(out, model(x, t, Cond(low_res=low)))  # no level given: a clean input
    assert not torch.allclose(out, model(x, t, Cond(low_res=low, noise_level=torch.tensor([300.0, 0.0]))))
    assert not torch.allclose(out, model(x, t, Cond(low_res=torch.randn_like(low))))
    with pytest.raises(ValueError, match="low_res"):
        model(x, t)


def test_context_frames_enter_as_latte_does():
    """The channels (x_t, m ∘ z, m) come from nn.inputs.with_context, bit for bit what Latte builds."""
    latte = Latte(LatteConfig(patch_size=2, hidden_size=16, depth=2, num_heads=2),
                  ConditionsConfig(context_frames=True), C)
    x = latents()
    for m in (torch.tensor([1.0, 0, 0]).view(1, 1, 3, 1, 1).expand(B, 1, 3, 1, 1),
              torch.rand(B, 1, 3, 4, 4).round()):
        cond = Conditioning(context=torch.randn_like(x), context_mask=m)
        assert torch.equal(with_context(x, cond), latte.with_context(x, cond))
    assert torch.equal(with_context(x, None), latte.with_context(x, None))
    model = perturb(walt(ConditionsConfig(context_frames=True)))
    cond = Conditioning(context=torch.randn_like(x), context_mask=torch.ones(B, 1, 3, 1, 1))
    assert not torch.allclose(model(x, torch.tensor([1, 2]), cond), model(x, torch.tensor([1, 2])))


@pytest.mark.parametrize("text_attention", ["concat_kv", "cross"])
def test_text_reaches_the_output_and_the_empty_prompt_differs(text_attention):
    model = perturb(walt(ConditionsConfig(text_channels=6), text_attention=text_attention, text_pooled=True))
    x, t = latents(), torch.tensor([100, 800])
    text = torch.randn(B, 4, 6)
    full = model(x, t, Conditioning(text=text, text_mask=torch.ones(B, 4, dtype=bool)))
    assert torch.equal(full, model(x, t, Conditioning(text=text)))  # no mask: every token is real
    other = model(x, t, Conditioning(text=torch.randn(B, 4, 6)))
    empty = model(x, t, Conditioning(text=text, text_mask=torch.zeros(B, 4, dtype=bool)))
    assert not torch.allclose(full, other) and not torch.allclose(full, empty)
    padded = model(x, t, Conditioning(text=torch.cat([text, torch.randn(B, 2, 6)], 1),
                                      text_mask=torch.tensor([[1, 1, 1, 1, 0, 0]] * B, dtype=bool)))
    torch.testing.assert_close(padded, full, atol=1e-5, rtol=1e-5)  # padding tokens are ignored


# ---------------------------------------------------------------------------------------- every switch trains
WINDOWS = {"default": lambda p: {},
           "small": lambda p: {"spatial_window": (2 // p, 2 // p), "spatiotemporal_window": (1, 2 // p, 2 // p)},
           "full": lambda p: {"spatiotemporal_window": (2, 4 // p, 4 // p)}}


@pytest.mark.parametrize("adaln, text_attention, patch, windows",
                         list(itertools.product(["lora", "separate"], ["concat_kv", "cross"], [1, 2], WINDOWS)))
def test_every_switch_combination_trains(adaln, text_attention, patch, windows):
    conditions = ConditionsConfig(num_classes=3, text_channels=6, self_cond=0.9)
    model = walt(conditions, pos_grid=(2, 4, 4), adaln=adaln, text_attention=text_attention, patch_size=patch,
                 text_in_stw=windows == "small", **WINDOWS[windows](patch)).train()
    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(B, C, 2, 4, 4, generator=g), torch.randn(B, C, 2, 4, 4, generator=g)
    cond = Conditioning(labels=torch.tensor([0, 2]), text=torch.randn(B, 3, 6, generator=g),
                        self_cond=torch.randn(B, C, 2, 4, 4, generator=g))
    t = torch.tensor([10, 600])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = (model(x, t, cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert losses[-1] < 0.8 * losses[0], losses


def test_a_super_resolution_model_learns_to_use_its_low_resolution_input():
    """Trained on a target that is the upsampled low-resolution latent, it beats itself given another one."""
    model = walt(ConditionsConfig(low_res=True, noise_level=True), hidden_size=32).train()
    g = torch.Generator().manual_seed(0)
    low = torch.randn(8, C, 3, 2, 2, generator=g)
    target = low.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # (8, C, 3, 4, 4)
    x, t = torch.randn(8, C, 3, 4, 4, generator=g), torch.full((8,), 500)
    cond = Cond(low_res=low, noise_level=torch.full((8,), 50.0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = (model(x, t, cond) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right = (model(x, t, cond) - target).square().mean()
        wrong = (model(x, t, Cond(low_res=low.roll(1, 0), noise_level=cond.noise_level)) - target).square().mean()
    assert right < 0.5 * wrong, (right, wrong)


# ---------------------------------------------------------------------------------------- config errors
def run(*extra: str):
    return load_config(overrides=["model.family=walt", "model.pos_grid=[4,8,8]", "data.size=8", "data.frames=4",
                                  *extra])


@pytest.mark.parametrize("extra, words", [
    (["model.spatiotemporal_window=[4,3,3]"], ["model.spatiotemporal_window=[4, 3, 3]", "8×8"]),
    (["model.spatial_window=[3,4]"], ["model.spatial_window=[3, 4]", "model.pos_grid=[4, 8, 8]"]),
    (["model.spatiotemporal_window=[3,4,4]"], ["model.spatiotemporal_window=[3, 4, 4]"]),
    (["model.patch_size=2", "model.pos_grid=[4,9,9]"], ["model.patch_size=2", "model.pos_grid=[4, 9, 9]"]),
    (["model.patch_size=3"], ["data.size=8", "model.patch_size"]),
    (["model.pos_grid=null"], ["model.pos_grid", "[4, 8, 8]"]),
    (["model.patch_size=8"], ["model.spatiotemporal_window", "even"]),
    (["model.spatiotemporal_window=[1,2,2]", "data.size=6"], ["model.spatiotemporal_window", "does not scale"]),
    (["model.depth=3"], ["model.depth=3", "even"]),
    (["model.num_heads=5"], ["model.num_heads=5"]),
    (["model.adaln_lora_rank=0"], ["model.adaln_lora_rank"]),
    (["model.text_pooled=true"], ["model.text_pooled", "conditions.text_channels"]),
    (["conditions.noise_level=true"], ["conditions.noise_level", "conditions.low_res"]),
    (["model.adaln=shared"], ["model.adaln", "lora"]),
])
def test_bad_configs_are_one_line_errors_before_any_compute(extra, words):
    with pytest.raises(ConfigError) as e:
        run(*extra)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_window_key_on_a_latte_config_names_walt():
    with pytest.raises(ConfigError, match="it is a walt key"):
        load_config(overrides=["model.spatiotemporal_window=[1,2,2]"])


def test_the_conditions_walt_takes_load():
    cfg = run("conditions.num_classes=3", "conditions.text_channels=6", "conditions.context_frames=true",
              "conditions.self_cond=0.9", "conditions.low_res=true", "conditions.noise_level=true",
              "data.use_image_num=2")
    assert cfg.model.windows((4, 8, 8)) == ((1, 8, 8), (4, 4, 4))


# ---------------------------------------------------------------------------------------- another latent size
def test_another_latent_size_runs_and_the_original_size_is_unchanged():
    model = perturb(walt(spatiotemporal_window=(3, 2, 2)))
    x, t = latents(), torch.tensor([100, 800])
    before = model(x, t)
    assert model.config.windows((3, 4, 6)) == ((1, 4, 6), (3, 2, 3))  # the paper's 16×16 -> 16×28, scaled
    wide = model(latents(W=6), t)  # 9:16-like: 4×6 latents
    assert wide.shape == (B, C, 3, 4, 6) and torch.isfinite(wide).all()
    for T in (2, 4):  # fewer frames: their own rows; more: interpolated
        assert model(latents(T=T), t).shape == (B, C, T, 4, 4)
    assert torch.equal(model(x, t), before)  # nothing was changed by running elsewhere
    with pytest.raises(ConfigError, match="spatiotemporal_window"):
        model(latents(W=5), t)  # a window of 2 of 4 does not scale to 5


def test_regrid_bakes_the_interpolation_into_the_weights(tmp_path):
    model = perturb(walt(spatiotemporal_window=(3, 2, 2)))
    x, t = latents(W=6), torch.tensor([100, 800])
    on_the_fly = model(x, t)
    model.regrid((3, 4, 6))
    assert model.config.pos_grid == (3, 4, 6) and model.config.spatiotemporal_window == (3, 2, 3)
    assert model.pos_embed_spatial.shape == (4, 6, 16)
    torch.testing.assert_close(model(x, t), on_the_fly, atol=1e-6, rtol=1e-6)
    same = perturb(walt()).regrid((3, 4, 4))  # to its own grid: nothing changes
    torch.testing.assert_close(same(latents(), t), perturb(walt())(latents(), t), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------- shipped configs
def test_the_shipped_configs_load_and_build():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    t2v = load_config(root / "configs/walt/shapes-t2v-tiny.yaml")
    model = Walt.from_config(t2v.model, t2v.conditions, 4)  # the shipped causal VAE's 4 latent channels
    x = torch.randn(1, 4, 5, 8, 8)  # 17×32×32 pixels -> 5×8×8 latents
    m = torch.zeros(1, 1, 5, 1, 1)
    m[:, :, 0] = 1
    out = model(x, torch.tensor([500]), Conditioning(text=torch.randn(1, 7, 384), context=x * m, context_mask=m))
    assert out.shape == x.shape
    ucf = load_config(root / "configs/walt/ucf101-L.yaml")
    with torch.device("meta"):
        big = Walt.from_config(ucf.model, ucf.conditions, 8)
    assert abs(sum(p.numel() for p in big.parameters()) - 313e6) / 313e6 < 0.03
