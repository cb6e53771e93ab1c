"""The super-resolution upsampler, trained and sampled (Video LDM's temporally aligned upsampler, W.A.L.T's latent SR):
the low-resolution latent training feeds is the encoding of the area-downsampled clip; noise-conditioning
augmentation follows sqrt(ᾱ_s) z + sqrt(1 − ᾱ_s) ε with levels drawn in [0, max] after every other draw; patch
training crops the latents and the low-resolution latent at matching windows; the latent cache keeps the
low-resolution latent under a key that changes only for an upsampler; a tiny Video LDM upsampler trains on crops
and samples whole frames, a tiny W.A.L.T one trains; ``pipe(low_res=...)`` and ``moviola sample --upsample``
check their arguments before any compute."""
from __future__ import annotations

import hashlib

import av
import pytest
import torch
import torch.nn.functional as F

import moviola
from moviola.autoencoders import build_autoencoder
from moviola.cli import main
from moviola.config import ConfigError, load_config, to_dict
from moviola.data import build_dataset
from moviola.data.latent_cache import LatentCache, autoencoder_fingerprint, dataset_fingerprint
from moviola.diffusion import build_schedule
from moviola.diffusion.schedule import make_betas
from moviola.models.registry import build_model
from moviola.pipelines import Pipeline
from moviola.training.trainer import Trainer
from moviola.video import save_video

B, S, T = 2, 32, 4  # batch, frame size (pixels = latent pixels with the identity autoencoder), frames
VLDM = ["name=up", "model.family=video_ldm", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
        "model.num_heads=2", "model.norm_num_groups=8", "model.temporal_head_channels=8", f"data.size={S}",
        f"data.frames={T}", "data.count=8", f"train.batch_size={B}", "train.steps=2", "train.checkpoint_every=1000",
        "train.device=cpu", "train.precision=fp32", "sample.steps=2"]
UP = ["conditions.low_res=true"]
AUG = [*UP, "conditions.noise_level=true"]
WALT = ["name=walt-up", "model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
        f"model.pos_grid=[{T},{S},{S}]", "model.patch_size=8", f"data.size={S}", f"data.frames={T}", "data.count=4",
        "train.batch_size=2", "train.steps=1", "train.checkpoint_every=1000", "train.device=cpu",
        "train.precision=fp32"]


def cfg(*extra: str):
    return load_config(overrides=[*VLDM, *extra])


def trainer(tmp_path, *extra: str, name: str = "run") -> Trainer:
    return Trainer(cfg(*extra), tmp_path / name, quiet=True)


def area(video: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, C, T, H, W) -> each frame area-resampled by F.interpolate, independently of the code under test."""
    b, c, t, h, w = video.shape
    frames = video.transpose(1, 2).reshape(b * t, c, h, w)
    small = F.interpolate(frames, size=(h // factor, w // factor), mode="area")
    return small.view(b, t, c, h // factor, w // factor).transpose(1, 2)


def step_draws(tr: Trainer, step: int, x0_shape, low_shape):
    """The step's generator replayed in the documented order: timesteps, noise, label dropout (the run's only
    condition draw here), then the upsampler's levels and ε."""
    g = torch.Generator().manual_seed(tr.cfg.train.seed * 1_000_003 + step)
    torch.randint(0, tr.cfg.diffusion.num_timesteps, (x0_shape[0],), generator=g)
    noise = torch.randn(x0_shape, generator=g)
    torch.rand(x0_shape[0], generator=g)
    levels = torch.randint(0, tr.cfg.conditions.noise_level_max + 1, (x0_shape[0],), generator=g)
    return noise, levels, torch.randn(low_shape, generator=g)


# ------------------------------------------------------------------------ (a) the low-resolution latent
@pytest.mark.parametrize("factor", [2, 4])
def test_the_low_res_latent_is_the_encoding_of_the_area_downsampled_clip(tmp_path, factor):
    tr = trainer(tmp_path, *UP, f"conditions.low_res_factor={factor}")
    for step in range(2):
        batch = tr.task.read_batch(step)
        x0, cond, *_ = tr.make_batch(step, batch)
        assert torch.equal(x0, batch["video"])  # the identity autoencoder: latents are pixels
        assert cond.low_res.shape == (B, 3, T, S // factor, S // factor) and cond.noise_level is None
        torch.testing.assert_close(cond.low_res, area(batch["video"], factor), rtol=0, atol=1e-6)


def test_a_real_autoencoder_encodes_the_downsampled_clip(tmp_path):
    vae = ["autoencoder.kind=frame_vae", "autoencoder.path=checkpoints/shapes-frame-vae-32"]
    tr = trainer(tmp_path, *UP, *vae)
    batch = tr.task.read_batch(0)
    _, cond, *_ = tr.make_batch(0, batch)
    ae = build_autoencoder(cfg(*UP, *vae).autoencoder)
    with torch.no_grad():
        expected = ae.encode(area(batch["video"], 2))  # 16×16×3 pixels -> 4×4×4
    assert cond.low_res.shape == (B, 4, T, 4, 4)
    torch.testing.assert_close(cond.low_res, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ (b) noise-conditioning augmentation
def test_level_zero_is_the_clean_low_res_latent_exactly(tmp_path):
    clean = trainer(tmp_path, *UP, name="clean")
    zero = trainer(tmp_path, *AUG, "conditions.noise_level_max=0", name="zero")
    for step in range(2):
        _, cond, *_ = zero.make_batch(step)
        assert torch.equal(cond.noise_level, torch.zeros(B)) and cond.noise_level.dtype == torch.float32
        assert torch.equal(cond.low_res, clean.make_batch(step)[1].low_res)


def test_the_noised_latent_follows_the_formula_with_levels_in_range(tmp_path):
    top = 400
    tr = trainer(tmp_path, *AUG, f"conditions.noise_level_max={top}", "train.batch_size=4")
    ab = torch.cumprod(1 - make_betas("linear", 1000, 1e-4, 0.02), 0)  # the run's schedule, recomputed here
    seen = []
    for step in range(3):
        batch = tr.task.read_batch(step)
        x0, cond, *_ = tr.make_batch(step, batch)
        z = area(batch["video"], 2).double()
        _, levels, eps = step_draws(tr, step, x0.shape, z.shape)
        assert torch.equal(cond.noise_level, levels.float())
        a = ab[levels].view(-1, 1, 1, 1, 1)
        expected = torch.where(levels.view(-1, 1, 1, 1, 1) == 0, z, a.sqrt() * z + (1 - a).sqrt() * eps.double())
        torch.testing.assert_close(cond.low_res.double(), expected, rtol=0, atol=1e-5)
        assert not torch.allclose(cond.low_res, z.float(), atol=1e-3)  # it is noised
        seen.append(levels)
    levels = torch.cat(seen)
    assert levels.min() >= 0 and levels.max() <= top and len(set(levels.tolist())) > 4  # they differ


# ------------------------------------------------------------------------ (c) runs without the upsampler
def test_the_upsamplers_draws_come_after_every_other_draw(tmp_path):
    """The low-resolution input and the crop change nothing an existing run draws (tests/test_golden.py pins
    those batches against the code before this feature)."""
    plain = trainer(tmp_path, "conditions.num_classes=48", name="plain")
    up = trainer(tmp_path, "conditions.num_classes=48", *AUG, name="up")
    cropped = trainer(tmp_path, "conditions.num_classes=48", "train.crop=8", name="crop")
    for step in range(2):
        x0, cond, t, noise, draws = plain.make_batch(step)
        assert cond.present() == ["labels"]
        x1, cond1, t1, noise1, draws1 = up.make_batch(step)
        assert torch.equal(x0, x1) and torch.equal(t, t1) and torch.equal(noise, noise1)
        assert torch.equal(cond.labels, cond1.labels) and torch.equal(draws.labels_kept, draws1.labels_kept)
        x2, cond2, t2, noise2, _ = cropped.make_batch(step)
        assert torch.equal(t, t2) and torch.equal(cond.labels, cond2.labels) and x2.shape[-2:] == (8, 8)


# ------------------------------------------------------------------------ (d) patch training
def window_of(full: torch.Tensor, part: torch.Tensor) -> tuple[int, int]:
    """Where (top, left) ``part`` (C, T, c, c) sits in ``full`` (C, T, H, W); fails when nowhere or not once."""
    c = part.shape[-1]
    found = [(y, x) for y in range(full.shape[-2] - c + 1) for x in range(full.shape[-1] - c + 1)
             if torch.equal(full[..., y:y + c, x:x + c], part)]
    assert len(found) == 1, f"the crop is {len(found)} windows of the full tensor, not one"
    return found[0]


@pytest.mark.parametrize("extra", [[], ["conditions.context_frames=true"], ["data.use_image_num=1"]])
def test_the_crop_and_the_low_res_crop_correspond(tmp_path, extra):
    crop = 8
    tr = trainer(tmp_path, *UP, f"train.crop={crop}", *extra)
    for step in range(3):
        batch = tr.task.read_batch(step)
        x0, cond, _, noise, _ = tr.make_batch(step, batch)
        frames = T + (1 if extra == ["data.use_image_num=1"] else 0)
        assert x0.shape == noise.shape == (B, 3, frames, crop, crop)
        assert cond.low_res.shape == (B, 3, frames, crop // 2, crop // 2)
        # downsampling the crop is the low-resolution crop (the windows cover the same pixels)
        torch.testing.assert_close(area(x0, 2), cond.low_res, rtol=0, atol=1e-6)
        full_noise, _, _ = step_draws(tr, step, (B, 3, frames, S, S), (1,))
        for i in range(B):
            y, x = window_of(full_noise[i], noise[i])  # one window of the step's noise, for every frame
            assert y % 2 == 0 and x % 2 == 0  # offsets are multiples of the factor
            assert torch.equal(x0[i, :, :T], batch["video"][i, ..., y:y + crop, x:x + crop])  # the clip's window
        if cond.context is not None:
            assert torch.equal(cond.context, x0 * cond.context_mask)


def test_a_whole_frame_crop_without_low_res_is_the_frame(tmp_path):
    x0, *_ = trainer(tmp_path, f"train.crop={S}").make_batch(0)
    assert torch.equal(x0, trainer(tmp_path, name="whole").make_batch(0)[0])


@pytest.mark.parametrize("extra, words", [
    (["train.crop=64"], ["train.crop=64", "32×32", "at most 32"]),
    ([*UP, "train.crop=7"], ["train.crop=7", "conditions.low_res_factor=2"]),
    (["train.crop=-1"], ["train.crop", "at least 0"]),
    ([*UP, "conditions.low_res_factor=3"], ["data.size=32", "conditions.low_res_factor", "3"]),
    ([*AUG, "conditions.noise_level_max=1000"], ["conditions.noise_level_max=1000", "999"]),
    ([*AUG, "sample.noise_level=1000"], ["sample.noise_level=1000"]),
])
def test_bad_upsampler_configs_are_one_line_errors(extra, words):
    with pytest.raises(ConfigError) as e:
        cfg(*extra)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("overrides, words", [
    (["model.patch_size=8", "data.size=32", "train.crop=16", "train.device=cpu"], ["train.crop=16", "latte"]),
    ([*WALT, "train.crop=16"], ["train.crop=16", "walt"]),
    ([*VLDM, "train.crop=3"], ["train.crop=3", "3×3"]),  # the U-Net halves the latent once
])
def test_crops_a_model_cannot_learn_from_are_refused_before_compute(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as e:
        Trainer(load_config(overrides=overrides), tmp_path / "run", quiet=True)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "run").exists()


def test_walt_takes_only_factor_2():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[*WALT, *UP, "conditions.low_res_factor=4"])
    assert "conditions.low_res_factor=4" in str(e.value) and "set it to 2" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------ (e) the latent cache
def cache_key(data: dict, dataset, ae) -> str:
    """The cache directory's key as it was computed before upsamplers (autoencoder + data fingerprints)."""
    return hashlib.sha256((autoencoder_fingerprint(ae) + dataset_fingerprint(data, dataset)).encode()).hexdigest()[:32]


def test_the_cache_key_differs_only_for_an_upsampler(tmp_path):
    c = cfg()
    data, ds, ae = to_dict(c)["data"], build_dataset(c.data), build_autoencoder(c.autoencoder)
    dirs = {f: LatentCache(ds, ae, data, cache_dir=str(tmp_path), low_res_factor=f).dir.name for f in (0, 2, 4)}
    assert dirs[0] == cache_key(data, ds, ae)  # old caches keep their key
    assert len(set(dirs.values())) == 3


def test_the_cache_stores_and_returns_the_low_res_latent(tmp_path):
    seed = "data.seed=11"  # a cache of its own (the test cache directory lives for the session)
    cached = trainer(tmp_path, *UP, "data.latent_cache=true", seed, name="cached")
    assert cached.task.dataset.encoded == 8  # filled: every clip, with its low-resolution latent
    item = cached.task.dataset[3]
    assert set(item) >= {"latent", "low_latent"} and item["low_latent"].shape == (3, T, S // 2, S // 2)
    again = trainer(tmp_path, *UP, "data.latent_cache=true", seed, name="again")
    assert again.task.dataset.encoded == 0 and again.task.dataset.dir == cached.task.dataset.dir  # read back
    plain = trainer(tmp_path, *UP, seed, name="plain")
    for step in range(2):
        batch = again.task.read_batch(step)
        assert "low_latent" in batch  # collate carries it
        a, b = again.make_batch(step, batch), plain.make_batch(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1].low_res, b[1].low_res)
    other = trainer(tmp_path, "data.latent_cache=true", seed, name="other")
    assert other.task.dataset.dir != cached.task.dataset.dir and "low_latent" not in other.task.dataset[3]


def test_joint_images_from_the_cache_carry_their_low_res_frames(tmp_path):
    cached = trainer(tmp_path, *UP, "data.use_image_num=2", "data.latent_cache=true", "data.seed=12", name="cached")
    plain = trainer(tmp_path, *UP, "data.use_image_num=2", "data.seed=12", name="plain")
    a, b = cached.make_batch(1), plain.make_batch(1)
    assert a[1].low_res.shape == (B, 3, T + 2, S // 2, S // 2)
    torch.testing.assert_close(a[1].low_res, b[1].low_res, rtol=0, atol=1e-6)
    torch.testing.assert_close(area(a[0], 2), a[1].low_res, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ (f) training and sampling
@pytest.fixture(scope="module")
def upsampler(tmp_path_factory):
    """A tiny Video LDM upsampler with noise augmentation, trained two steps on 8×8 crops of 32×32 frames."""
    run = tmp_path_factory.mktemp("up") / "run"
    last = Trainer(cfg(*AUG, "train.crop=8", "train.lr=1e-3"), run, quiet=True).train()
    return run, last


def low_video(n: int = 1, seed: int = 0, size: int = S // 2) -> torch.Tensor:
    return torch.rand(n, 3, T, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_trained_on_crops_it_samples_whole_frames(upsampler):
    run, last = upsampler
    assert torch.isfinite(torch.tensor(last["loss"]))
    pipe = moviola.load_pipeline(run, device="cpu")
    assert {"low_res", "noise_level"} <= pipe.accepts
    video = pipe(low_res=low_video(2), steps=2)
    assert video.shape == (2, 3, T, S, S) and torch.isfinite(video).all()
    assert pipe(low_res=low_video(1)[0], num_videos=3, steps=2).shape == (3, 3, T, S, S)  # one video, three seeds
    assert torch.equal(pipe(low_res=low_video(1), steps=2, seed=5), pipe(low_res=low_video(1), steps=2, seed=5))
    assert not torch.equal(pipe(low_res=low_video(1), steps=2, noise_level=0),
                           pipe(low_res=low_video(1), steps=2, noise_level=200))


def test_the_model_gets_the_low_res_latent_noised_by_the_training_formula(upsampler):
    pipe = moviola.load_pipeline(upsampler[0], device="cpu")
    seen = []
    inner = pipe.model.forward
    pipe.model.forward = lambda x, t, cond=None, **kw: seen.append(cond) or inner(x, t, cond, **kw)
    low, level, seed = low_video(2), 120, 7
    pipe(low_res=low, steps=2, seed=seed, noise_level=level)
    ab = torch.cumprod(1 - make_betas("linear", 1000, 1e-4, 0.02), 0)[level]
    expected = []
    for i in range(2):  # video i's generator: its start noise, then its ε
        g = torch.Generator().manual_seed(seed + i)
        torch.randn(1, 3, T, S, S, generator=g)
        expected.append(ab.sqrt() * low[i:i + 1].double() + (1 - ab).sqrt() * torch.randn(1, 3, T, S // 2, S // 2,
                                                                                            generator=g).double())
    assert len(seen) == 2 and all(torch.equal(c.noise_level, torch.full((2,), float(level))) for c in seen)
    torch.testing.assert_close(seen[0].low_res.double(), torch.cat(expected), rtol=0, atol=1e-5)
    assert torch.equal(seen[0].low_res, seen[1].low_res)  # the same input at every step
    seen.clear()
    pipe(low_res=low, steps=1, noise_level=0)
    assert torch.equal(seen[0].low_res, low)  # level 0: the clean latent (identity autoencoder)


def test_a_tiny_walt_upsampler_trains_a_step(tmp_path):
    last = Trainer(load_config(overrides=[*WALT, *AUG]), tmp_path / "run", quiet=True).train()
    assert last["step"] == 1 and torch.isfinite(torch.tensor(last["loss"]))


# ------------------------------------------------------------------------ (g) pipeline argument errors
def tiny_pipe(*extra: str) -> Pipeline:
    c = cfg(*extra)
    model = build_model(c.model, c.conditions, 3)
    return Pipeline(model, build_autoencoder(c.autoencoder), build_schedule(c.diffusion), c, device="cpu")


@pytest.fixture()
def no_compute(monkeypatch):
    """Fail the test when anything is encoded or denoised."""
    def refuse(*args, **kwargs):
        raise AssertionError("computed before the argument error")

    return lambda pipe: (monkeypatch.setattr(pipe.autoencoder, "encode", refuse),
                         monkeypatch.setattr(pipe.model, "forward", refuse))


@pytest.mark.parametrize("kwargs, kind, words", [
    (dict(), ValueError, ["upsampler", "low_res="]),
    (dict(low_res=low_video(), height=48), ValueError, ["height=48", "32×32", "leave height out"]),
    (dict(low_res=low_video(), num_frames=8), ValueError, ["num_frames=8", "leave num_frames out"]),
    (dict(low_res=low_video() * 3), ValueError, ["[-1, 1]"]),
    (dict(low_res=low_video()[:, :1]), ValueError, ["(B, 3, T, h, w)"]),
    (dict(low_res=low_video() * float("nan")), ValueError, ["low_res", "finite"]),
    (dict(low_res=[1, 2]), TypeError, ["low_res", "list"]),
    (dict(low_res="nowhere.mp4"), ValueError, ["nowhere.mp4", "no such video file"]),
    (dict(low_res=low_video(2), num_videos=3), ValueError, ["2 low-resolution videos for 3 videos"]),
    (dict(low_res=low_video(), noise_level=1000), ValueError, ["noise_level", "999"]),
    (dict(low_res=low_video(), noise_level=-1), ValueError, ["noise_level"]),
    (dict(low_res=low_video(), noise_level=True), TypeError, ["noise_level"]),
    (dict(low_res=low_video(), noise_level=2.5), TypeError, ["noise_level"]),
])
def test_upsampler_argument_errors_come_before_any_compute(no_compute, kwargs, kind, words):
    pipe = tiny_pipe(*AUG)
    no_compute(pipe)
    with pytest.raises(kind) as e:
        pipe(steps=2, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_low_res_for_another_model_and_noise_level_without_augmentation_are_named(no_compute):
    plain, clean = tiny_pipe(), tiny_pipe(*UP)
    no_compute(plain)
    no_compute(clean)
    with pytest.raises(ValueError, match=r"low_res: this model is not an upsampler.*conditions\.low_res"):
        plain(low_res=low_video(), steps=2)
    with pytest.raises(ValueError, match=r"noise_level=50: .*conditions\.noise_level"):
        clean(low_res=low_video(), noise_level=50, steps=2)
    with pytest.raises(ValueError, match="noise_level"):
        plain(noise_level=50, steps=2)


def test_a_noise_level_above_the_trained_ones_runs_with_a_warning():
    pipe = tiny_pipe(*AUG, "conditions.noise_level_max=100")
    with pytest.warns(UserWarning, match=r"noise_level=300 is above .* \(0 to 100"):
        assert pipe(low_res=low_video(), noise_level=300, steps=1).shape == (1, 3, T, S, S)


def test_a_video_file_and_agreeing_sizes_are_taken(tmp_path):
    pipe = tiny_pipe(*UP)  # no augmentation: the clean latent
    path = save_video(low_video()[0], tmp_path / "low.mp4")
    assert pipe(low_res=str(path), steps=1, height=S, width=S, num_frames=T).shape == (1, 3, T, S, S)


# ------------------------------------------------------------------------ (h) the CLI
def test_the_cli_upsamples_a_video_file(upsampler, tmp_path, capsys):
    run, _ = upsampler
    low = save_video(low_video()[0], tmp_path / "low.mp4")
    out = tmp_path / "high.mp4"
    code = main(["sample", str(run), "--upsample", str(low), "--noise-level", "20", "--out", str(out), "--steps", "2",
                 "--quiet", "--device", "cpu"])
    assert code == 0 and f"{T} frames of {S}×{S}" in capsys.readouterr().out
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == T and frames[0].shape == (S, S, 3)


@pytest.mark.parametrize("argv, words", [
    (["--noise-level", "20"], ["--noise-level", "--upsample"]),
    (["--upsample", "nowhere.mp4"], ["--upsample nowhere.mp4", "no such video file"]),
    (["--upsample", "LOW", "--noise-level", "-3"], ["--noise-level", "-3"]),
    (["--upsample", "LOW", "--noise-level", "1000"], ["--noise-level 1000", "999"]),
    (["--upsample", "LOW", "--size", "48"], ["--size 48", "32×32", "leave --size out"]),
    (["--upsample", "LOW", "--frames", "6"], ["--frames 6", "leave --frames out"]),
    ([], ["upsampler", "--upsample VIDEO"]),
])
def test_cli_upsample_errors_are_one_line(upsampler, tmp_path, capsys, monkeypatch, argv, words):
    from moviola.pipelines.base import Pipeline as Pipe

    monkeypatch.setattr(Pipe, "__call__", lambda *a, **k: pytest.fail("sampled before the argument error"))
    low = save_video(low_video()[0], tmp_path / "low.mp4")
    argv = [str(low) if a == "LOW" else a for a in argv]
    code = main(["sample", str(upsampler[0]), *argv, "--out", str(tmp_path / "x.mp4"), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("moviola: error: "), err
    assert all(w in err for w in words), err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_upsample_on_a_model_that_is_no_upsampler(tmp_path, capsys):
    low = save_video(low_video()[0], tmp_path / "low.mp4")
    code = main(["sample", "checkpoints/shapes-latte-tiny", "--upsample", str(low), "--out", str(tmp_path / "x.mp4"),
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not an upsampler" in err and "conditions.low_res" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------ the example config
def test_the_example_config_loads():
    c = load_config("configs/video_ldm/shapes-upsampler.yaml")
    assert c.conditions.low_res and c.conditions.noise_level and c.train.crop == 8 and c.data.size == 64
    assert c.data.frames <= 16 and c.train.stage == "all"
