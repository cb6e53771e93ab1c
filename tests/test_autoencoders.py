"""Autoencoders: the frame-wise diffusers VAE equals diffusers applied frame by frame, with the
VAE's own latent normalization; the identity autoencoder is exact; loading errors are clear."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import moviola  # noqa: E402
from moviola.autoencoders import IdentityAutoencoder, build_autoencoder  # noqa: E402
from moviola.autoencoders.frame_vae import FrameVAE  # noqa: E402
from moviola.config import AutoencoderConfig  # noqa: E402

B, T, H, W = 2, 3, 16, 16


def tiny_vae(scaling_factor: float = 0.5, shift_factor=None) -> "diffusers.AutoencoderKL":
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
        sample_size=16, scaling_factor=scaling_factor, shift_factor=shift_factor)
    return vae.eval()


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    tiny_vae().save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def reference_vae(vae_dir) -> "diffusers.AutoencoderKL":
    return diffusers.AutoencoderKL.from_pretrained(str(vae_dir)).eval()


def video(seed: int = 0, b: int = B, t: int = T, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


# ------------------------------------------------------------------ the frame VAE

def test_load_autoencoder_reads_a_diffusers_directory(vae_dir):
    ae = moviola.load_autoencoder(vae_dir)
    assert isinstance(ae, FrameVAE)
    assert ae.latent_channels == 4 and ae.spatial_factor == 2 and ae.temporal_factor == 1
    assert ae.scaling_factor == 0.5  # from the VAE's config, not SD's 0.18215
    assert ae.shift_factor == 0.0
    assert ae.latent_shape(5, 16, 24) == (4, 5, 8, 12)
    with pytest.raises(ValueError, match="spatial factor"):
        ae.latent_shape(5, 15, 16)


def test_encode_shape_and_equals_diffusers_frame_by_frame(vae_dir, reference_vae):
    ae = moviola.load_autoencoder(vae_dir)
    x = video()
    z = ae.encode(x)
    assert z.shape == (B, 4, T, H // 2, W // 2)
    with torch.no_grad():
        for b in range(B):
            for t in range(T):
                ref = reference_vae.encode(x[b:b + 1, :, t]).latent_dist.mean * 0.5
                assert (z[b:b + 1, :, t] - ref).abs().max() < 1e-5, (b, t)


def test_decode_equals_diffusers_frame_by_frame(vae_dir, reference_vae):
    ae = moviola.load_autoencoder(vae_dir)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(B, 4, T, H // 2, W // 2, generator=g)
    x = ae.decode(z)
    assert x.shape == (B, 3, T, H, W)
    with torch.no_grad():
        for b in range(B):
            for t in range(T):
                ref = reference_vae.decode(z[b:b + 1, :, t] / 0.5).sample
                assert (x[b:b + 1, :, t] - ref).abs().max() < 1e-5, (b, t)


def test_chunking_does_not_change_results(vae_dir):
    x = video(2)
    whole = FrameVAE.from_pretrained(vae_dir, chunk_frames=64)
    chunked = FrameVAE.from_pretrained(vae_dir, chunk_frames=4)  # 6 frames -> chunks of 4 and 2
    z = whole.encode(x)
    assert torch.allclose(chunked.encode(x), z, atol=1e-5)
    assert torch.allclose(chunked.decode(z), whole.decode(z), atol=1e-5)


def test_scaling_factor_from_config_is_used(tmp_path):
    # the same weights saved with two scaling factors: latents scale with the factor
    for factor in (0.5, 0.25):
        tiny_vae(scaling_factor=factor).save_pretrained(str(tmp_path / str(factor)))
    x = video(3)
    a = moviola.load_autoencoder(tmp_path / "0.5")
    b = moviola.load_autoencoder(tmp_path / "0.25")
    assert (a.scaling_factor, b.scaling_factor) == (0.5, 0.25)
    za, zb = a.encode(x), b.encode(x)
    assert torch.allclose(za, 2 * zb, atol=1e-6)
    # decode undoes the scaling: the same video comes out of both latent spaces
    assert torch.allclose(a.decode(za), b.decode(zb), atol=1e-5)


def test_shift_factor_from_config_is_used(tmp_path):
    tiny_vae(scaling_factor=0.5, shift_factor=0.3).save_pretrained(str(tmp_path / "shifted"))
    tiny_vae(scaling_factor=0.5).save_pretrained(str(tmp_path / "plain"))
    shifted, plain = moviola.load_autoencoder(tmp_path / "shifted"), moviola.load_autoencoder(tmp_path / "plain")
    assert shifted.shift_factor == pytest.approx(0.3)
    x = video(4)
    raw = plain.encode(x) / 0.5  # the unnormalized latent
    assert torch.allclose(shifted.encode(x), (raw - 0.3) * 0.5, atol=1e-5)
    z = torch.randn(1, 4, 2, 8, 8)
    assert torch.allclose(shifted.decode(z), plain.decode(z + 0.3 * 0.5), atol=1e-5)


def test_config_overrides_the_vae_scaling_factor(vae_dir):
    ae = build_autoencoder(AutoencoderConfig(kind="frame_vae", path=str(vae_dir), scaling_factor=0.125,
                                             shift_factor=0.1, chunk_frames=2))
    assert ae.scaling_factor == 0.125 and ae.shift_factor == 0.1 and ae.chunk_frames == 2
    ref = moviola.load_autoencoder(vae_dir)
    x = video(5)
    assert torch.allclose(ae.encode(x), (ref.encode(x) / 0.5 - 0.1) * 0.125, atol=1e-5)


def test_sampled_latents_use_the_generator(vae_dir):
    ae = moviola.load_autoencoder(vae_dir)
    x = video(6)
    a = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    b = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.allclose(a, ae.encode(x), atol=1e-4)  # a sample is not the mean


def test_vae_subfolder_is_found(tmp_path):
    tiny_vae().save_pretrained(str(tmp_path / "pipeline" / "vae"))
    ae = moviola.load_autoencoder(tmp_path / "pipeline")
    assert isinstance(ae, FrameVAE) and ae.latent_channels == 4


def test_weights_are_frozen(vae_dir):
    ae = moviola.load_autoencoder(vae_dir)
    assert not any(p.requires_grad for p in ae.parameters())
    assert not ae.vae.training


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        moviola.load_autoencoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        moviola.load_autoencoder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_autoencoder(AutoencoderConfig(kind="frame_vae", path=str(tmp_path / "nope")))


def test_latent_diffusion_trains_and_samples_through_the_frame_vae(vae_dir, tmp_path):
    from moviola.config import load_config
    from moviola.training.trainer import Trainer

    cfg = load_config(overrides=[
        "autoencoder.kind=frame_vae", f"autoencoder.path={vae_dir}", "model.patch_size=2",
        "model.hidden_size=32", "model.depth=2", "model.num_heads=2", "data.size=32", "data.frames=2",
        "data.count=4", "train.batch_size=2", "train.steps=2", "train.device=cpu", "train.log_every=1",
        "sample.steps=2"])
    t = Trainer(cfg, tmp_path / "run", quiet=True)
    assert t.model.in_channels == 4  # the model lives in the VAE's latent space
    t.train()
    pipe = moviola.load_pipeline(tmp_path / "run", device="cpu")
    out = pipe(num_videos=1, steps=2, seed=0)
    assert out.shape == (1, 3, 2, 32, 32)
    # a moviola checkpoint names its own autoencoder
    ae = moviola.load_autoencoder(tmp_path / "run")
    assert isinstance(ae, FrameVAE) and ae.scaling_factor == 0.5


# ------------------------------------------------------------------ identity

def test_identity_round_trip_is_exact():
    ae = moviola.load_autoencoder("identity")
    assert isinstance(ae, IdentityAutoencoder)
    x = video(7)
    z = ae.encode(x)
    assert torch.equal(z, x) and torch.equal(ae.decode(z), x)
    assert ae.latent_channels == 3 and ae.spatial_factor == 1 and ae.temporal_factor == 1
    assert ae.latent_shape(4, 8, 12) == (3, 4, 8, 12)
    assert isinstance(build_autoencoder(AutoencoderConfig()), IdentityAutoencoder)


def test_load_autoencoder_of_a_pixel_space_checkpoint_is_identity(tmp_path):
    from moviola.config import load_config
    from moviola.training.trainer import Trainer

    cfg = load_config(overrides=["model.patch_size=8", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
                                 "data.frames=2", "data.count=2", "train.batch_size=1", "train.steps=1",
                                 "train.device=cpu"])
    Trainer(cfg, tmp_path / "run", quiet=True).train()
    assert isinstance(moviola.load_autoencoder(tmp_path / "run"), IdentityAutoencoder)
