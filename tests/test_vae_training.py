"""Autoencoder training (train-vae), export with latent normalization, eval-vae, and diffusion on the latents."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.ndimage
import torch

import moviola
from moviola.cli import main
from moviola.config import ConfigError, load_config
from moviola.eval.vae_metrics import flicker, psnr, ssim
from moviola.training.trainer import Trainer
from moviola.training.vae_losses import LeCam, adaptive_weight
from moviola.training.vae_trainer import VAETrainer, export_autoencoder


def vae_cfg(kind: str, *extra: str):
    frames = "5"
    common = ["name=vae", "train.task=autoencoder", f"autoencoder.kind={kind}", "autoencoder.base_channels=8",
              "autoencoder.channel_mults=[1,2]", "autoencoder.num_res_blocks=1", "autoencoder.latent_channels=4",
              "autoencoder.norm_groups=4",
              "data.size=32", f"data.frames={frames}", "data.count=16", "train.batch_size=2", "train.lr=2e-3",
              "train.device=cpu", "train.precision=fp32", "train.steps=4", "train.checkpoint_every=2",
              "train.log_every=1", "vae.adv_start=2", "vae.disc_channels=8", "vae.disc_layers=2",
              "vae.lecam_weight=0.01", "vae.latent_stats_batches=2"]
    if kind == "causal_vae":
        common += ["autoencoder.temporal_downsample=[true]", "autoencoder.chunk_frames=4"]
    return load_config(overrides=[*common, *extra])


@pytest.mark.parametrize("kind", ["frame_vae", "causal_vae"])
def test_vae_training_resumes_exactly_with_the_discriminator(kind, tmp_path):
    straight = VAETrainer(vae_cfg(kind), tmp_path / "a", quiet=True)
    straight.train()
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert "d_loss" not in rows[0] and "d_loss" in rows[-1] and "adv_lambda" in rows[-1]  # adversarial from step 2
    first = VAETrainer(vae_cfg(kind), tmp_path / "b", quiet=True)
    first.train(max_steps=2)
    resumed = VAETrainer(vae_cfg(kind), tmp_path / "b", resume=True, quiet=True)
    resumed.train()
    for a, b in ((straight.model, resumed.model), (straight.ema.model, resumed.ema.model),
                 (straight.disc, resumed.disc), (straight.lecam, resumed.lecam)):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), ka


def test_reconstruction_improves_with_training(tmp_path):
    cfg = vae_cfg("causal_vae", "train.steps=40", "vae.adv_weight=0", "train.checkpoint_every=40",
                  "train.ema_decay=0.5")
    trainer = VAETrainer(cfg, tmp_path / "r", quiet=True)
    before = trainer.judge()["judge_psnr"]
    trainer.train()
    after = trainer.judge()["judge_psnr"]
    assert after > before + 3, (before, after)


def test_export_measures_the_latent_normalization_and_diffusion_trains_on_it(tmp_path):
    VAETrainer(vae_cfg("causal_vae"), tmp_path / "run", quiet=True).train()
    out = export_autoencoder(tmp_path / "run", tmp_path / "vae")
    ae = moviola.load_autoencoder(out)
    assert type(ae).__name__ == "CausalVAE" and ae.temporal_factor == 2 and ae.spatial_factor == 2
    # the normalized latents of the training batches: mean 0, std 1 per channel
    trainer_data = VAETrainer(vae_cfg("causal_vae"), tmp_path / "run", resume=True, quiet=True)
    videos = torch.cat([trainer_data.make_batch(s)[0] for s in range(2)])
    z = ae.encode(videos).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(z.mean(1), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(1, unbiased=False), torch.ones(4), atol=1e-4, rtol=0)
    # Latte trains and samples on the causal latents: 5 frames -> 3 latent frames of 16×16
    cfg = load_config(overrides=["name=lat", "model.size=tiny", "model.patch_size=4", "model.hidden_size=32",
                                 "model.depth=2", "model.num_heads=2", "conditions.num_classes=48",
                                 "autoencoder.kind=causal_vae", f"autoencoder.path={out}", "autoencoder.chunk_frames=4",
                                 "data.size=32", "data.frames=5", "data.count=8", "train.batch_size=2",
                                 "train.device=cpu", "train.precision=fp32", "train.steps=2",
                                 "train.checkpoint_every=2", "sample.steps=2"])
    Trainer(cfg, tmp_path / "latte", quiet=True).train()
    video = moviola.load_pipeline(tmp_path / "latte", device="cpu")(labels=[3], steps=2)
    assert video.shape == (1, 3, 5, 32, 32)


def test_vae_runs_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="set autoencoder.kind"):
        VAETrainer(vae_cfg("frame_vae", "autoencoder.kind=identity"), tmp_path / "x", quiet=True)
    with pytest.raises(ConfigError, match="data.frames=6 does not fit"):
        vae_cfg("causal_vae", "data.frames=6")


def test_eval_vae_cli_on_shapes_and_on_a_folder_with_a_broken_file(tmp_path, capsys):
    VAETrainer(vae_cfg("causal_vae"), tmp_path / "run", quiet=True).train()
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "vae")]) == 0
    assert main(["eval-vae", str(tmp_path / "vae"), "--shapes", "3", "--frames", "5", "--size", "32",
                 "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["clips"] == 3 and {"psnr", "ssim", "flicker"} <= set(r)
    moviola.data.shapes.write_shapes_folder(tmp_path / "clips", count=3, frames=8)
    (tmp_path / "clips" / "zz-broken.mp4").write_bytes(b"\0" * 64)
    assert main(["eval-vae", str(tmp_path / "run"), "--videos", str(tmp_path / "clips"), "--frames", "5",
                 "--size", "32", "--json", str(tmp_path / "f.json")]) == 0
    f = json.loads((tmp_path / "f.json").read_text())
    assert f["clips"] == 3 and f["skipped"] == {"unreadable": 1}
    assert [r["clip"] for r in f["per_clip"]] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    capsys.readouterr()
    assert main(["eval-vae", str(tmp_path / "vae"), "--shapes", "2", "--frames", "6", "--size", "32"]) == 2
    assert "6 frames" in capsys.readouterr().err  # the 1 + f·k rule, before any decoding


def test_psnr_ssim_flicker_against_independent_computations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 24, 24, generator=g) * 2 - 1
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    mse = (((x + 1) / 2 - (y + 1) / 2) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(psnr(y, x), 10 * torch.log10(1 / mse.double()))
    # SSIM by scipy's Gaussian filter (sigma 1.5, 11 taps), valid region, per frame and channel
    a, b = ((x[0, 1, 2] + 1) / 2).double().numpy(), ((y[0, 1, 2] + 1) / 2).double().numpy()
    f = lambda z: scipy.ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
    mx, my = f(a), f(b)
    vx, vy, cxy = f(a * a) - mx ** 2, f(b * b) - my ** 2, f(a * b) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ref = np.mean(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    ours = ssim(y[:1, 1:2, 2:3], x[:1, 1:2, 2:3])
    assert float(ours) == pytest.approx(ref, abs=1e-8)  # scipy normalizes its kernel in another order
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # a static reconstruction of a moving input flickers by exactly the input's own frame changes
    still = x[:, :, :1].expand_as(x)
    torch.testing.assert_close(flicker(still, x), ((x + 1) / 2).double().diff(dim=2).abs().flatten(1).mean(1))
    assert torch.all(flicker(x, x) == 0)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w = torch.randn(4, 3, requires_grad=True)
    inp = torch.randn(5, 3)
    rec = (inp @ w.T).pow(2).mean()
    adv = -(inp @ w.T).mean() * 7
    g_rec = torch.autograd.grad(rec, w, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(adv, w, retain_graph=True)[0].norm()
    assert float(adaptive_weight(rec, adv, w)) == pytest.approx(float(g_rec / (g_adv + 1e-4)), rel=1e-6)


def test_lecam_anchors_to_the_other_sides_average():
    lecam = LeCam(decay=0.5)
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, -3.0])
    lecam.update(real, fake)  # the first update starts the averages at the values: 3 and -2
    lecam.update(torch.tensor([5.0]), torch.tensor([0.0]))  # 4 and -1
    assert float(lecam.ema_real) == 4.0 and float(lecam.ema_fake) == -1.0
    reg = lecam(torch.tensor([0.0, -2.0]), torch.tensor([5.0, 3.0]))
    # mean relu(real - ema_fake)² = mean([1, 0]) and mean relu(ema_real - fake)² = mean([0, 1])
    assert float(reg) == pytest.approx(0.5 + 0.5)


def test_latent_cache_encodes_each_clip_once_and_trains_like_encoding_every_step(tmp_path, monkeypatch):
    monkeypatch.setenv("MOVIOLA_CACHE", str(tmp_path / "cache"))
    VAETrainer(vae_cfg("frame_vae"), tmp_path / "run", quiet=True).train()
    vae = export_autoencoder(tmp_path / "run", tmp_path / "vae")
    base = ["name=lat", "model.size=tiny", "model.patch_size=2", "model.hidden_size=32", "model.depth=2",
            "model.num_heads=2", "conditions.num_classes=48", "autoencoder.kind=frame_vae", f"autoencoder.path={vae}",
            "data.size=32", "data.frames=4", "data.count=6", "train.batch_size=3", "train.device=cpu",
            "train.precision=fp32", "train.steps=4", "train.checkpoint_every=4"]
    plain = Trainer(load_config(overrides=base), tmp_path / "plain", quiet=True)
    plain.train()
    cached = Trainer(load_config(overrides=[*base, "data.latent_cache=true"]), tmp_path / "cached", quiet=True)
    cached.train()
    assert cached.dataset.encoded == 6  # filled up front, in batches: each clip encoded once
    for (k, a), (_, b) in zip(plain.model.state_dict().items(), cached.model.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)
    again = Trainer(load_config(overrides=[*base, "data.latent_cache=true"]), tmp_path / "again", quiet=True)
    again.train()
    assert again.dataset.encoded == 0  # every latent came from the disk cache
    other = Trainer(load_config(overrides=[*base, "data.latent_cache=true", "data.seed=1"]), tmp_path / "o", quiet=True)
    other.train()
    assert other.dataset.encoded == 6  # other data, other key


def test_temporal_decoder_fine_tunes_on_a_trained_frame_vae_and_keeps_its_latents(tmp_path):
    VAETrainer(vae_cfg("frame_vae"), tmp_path / "fv", quiet=True).train()
    base_dir = export_autoencoder(tmp_path / "fv", tmp_path / "frame-vae")
    cfg = vae_cfg("frame_vae", "autoencoder.kind=temporal_decoder", f"autoencoder.path={base_dir}",
                  "vae.kl_weight=0")
    trainer = VAETrainer(cfg, tmp_path / "td", quiet=True)
    base = moviola.load_autoencoder(base_dir)
    video = trainer.make_batch(0)[0]
    with torch.no_grad():  # before training: exactly the frame decoder
        torch.testing.assert_close(trainer.model.decode(base.encode(video)), base.decode(base.encode(video)),
                                   atol=1e-5, rtol=0)  # block by block vs diffusers' own forward: float rounding
    frozen = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("base.")}
    trainer.train()
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in frozen.items())  # only temporal layers train
    out = export_autoencoder(tmp_path / "td", tmp_path / "temporal")
    td = moviola.load_autoencoder(out)
    assert type(td).__name__ == "TemporalDecoderVAE"
    assert torch.equal(td.encode(video), base.encode(video))  # latents stay those of the frame VAE
    with pytest.raises(ConfigError, match="needs autoencoder.path"):
        vae_cfg("frame_vae", "autoencoder.kind=temporal_decoder")


def test_latent_cache_key_changes_with_the_captions(tmp_path):
    from moviola.data.latent_cache import dataset_fingerprint

    class Folder:
        files: list = []

        def __init__(self, captions):
            self.captions = captions

    data = {"dataset": "folder", "root": "/x"}
    assert dataset_fingerprint(data, Folder({"a.mp4": {"caption": "old"}})) != \
        dataset_fingerprint(data, Folder({"a.mp4": {"caption": "new"}}))


def test_causal_vae_configs_count_latent_frames():
    # a denoiser on this VAE's latents: 13 frames -> 1 + 12/2 = 7 latent frames (factor 2): tubelet 7 fits, 2 does not
    with pytest.raises(ConfigError, match="7 latent frames .* not divisible by model.tubelet_size=2"):
        vae_cfg("causal_vae", "data.frames=13", "model.patch_embed=tubelet", "model.tubelet_size=2",
                "train.task=diffusion")


def test_exported_latent_model_finds_its_autoencoder_from_any_directory(tmp_path, monkeypatch):
    """Trained with a relative autoencoder.path (as configs/shapes/* are), exported next to its VAE:
    the export names the VAE relative to itself, so it loads and samples from another directory."""
    project = tmp_path / "project"
    (project / "checkpoints").mkdir(parents=True)
    VAETrainer(vae_cfg("causal_vae"), tmp_path / "vae-run", quiet=True).train()
    export_autoencoder(tmp_path / "vae-run", project / "checkpoints" / "vae")
    monkeypatch.chdir(project)
    cfg = load_config(overrides=["name=lat", "model.size=tiny", "model.patch_size=4", "model.hidden_size=32",
                                 "model.depth=2", "model.num_heads=2", "conditions.num_classes=48",
                                 "autoencoder.kind=causal_vae", "autoencoder.path=checkpoints/vae",
                                 "autoencoder.chunk_frames=4", "data.size=32", "data.frames=5", "data.count=8",
                                 "train.batch_size=2", "train.device=cpu", "train.precision=fp32", "train.steps=2",
                                 "train.checkpoint_every=2", "sample.steps=2"])
    Trainer(cfg, project / "runs" / "lat", quiet=True).train()
    assert main(["export", "runs/lat", "checkpoints/lat"]) == 0
    assert json.loads((project / "checkpoints" / "lat" / "config.json").read_text())["autoencoder"]["path"] == "../vae"
    here = moviola.load_pipeline("runs/lat", device="cpu")(labels=[3], steps=2, seed=1)
    monkeypatch.chdir(tmp_path)
    shipped = moviola.load_pipeline(project / "checkpoints" / "lat", device="cpu")
    assert type(shipped.autoencoder).__name__ == "CausalVAE"
    video = shipped(labels=[3], steps=2, seed=1)
    torch.testing.assert_close(video, here, atol=2e-2, rtol=0)  # fp16 export of the same EMA weights
    # an export of the export, elsewhere, still finds the VAE; so does a symlink to the export
    assert main(["export", str(project / "checkpoints" / "lat"), str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "config.json").read_text())["autoencoder"]["path"] == "../project/checkpoints/vae"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "link").symlink_to(project / "checkpoints" / "lat")
    for path in (tmp_path / "again", tmp_path / "elsewhere" / "link"):
        torch.testing.assert_close(moviola.load_pipeline(path, device="cpu")(labels=[3], steps=2, seed=1), video,
                                   atol=1e-3, rtol=0)
    # an autoencoder that is gone: refused at export, not written into a checkpoint that cannot load
    (project / "checkpoints" / "vae").rename(project / "checkpoints" / "vae-moved")
    assert main(["export", str(project / "runs" / "lat"), str(tmp_path / "broken")]) == 2
    assert not (tmp_path / "broken").exists()
