"""The ``autoencoder:`` section and what can be read of an autoencoder without loading its weights."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from moviola.config.base import ConfigError


@dataclass(frozen=True)
class AutoencoderConfig:
    kind: Literal["identity", "frame_vae", "causal_vae", "temporal_decoder"] = "identity"
    # frame_vae: a local diffusers-format AutoencoderKL directory (an SD VAE, or one moviola trained);
    # causal_vae: a CausalVAE directory (moviola export of a train-vae run). null: a new, untrained
    # autoencoder of the architecture below (what `moviola train-vae` trains).
    # temporal_decoder (Video LDM): a trained frame VAE to add temporal layers to (what train-vae
    # fine-tunes), or a TemporalDecoderVAE directory (moviola export of that run)
    path: Optional[str] = None
    scaling_factor: Optional[float] = None  # None = the VAE's own config value
    shift_factor: Optional[float] = None
    chunk_frames: int = 16  # frames encoded/decoded per call (causal_vae: a multiple of its temporal factor)
    # the architecture of a new autoencoder (path null)
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)  # one level per entry; 2x down in space between levels
    num_res_blocks: int = 2
    latent_channels: int = 4
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # causal_vae: 2x down in time at these transitions
    norm_groups: int = 32
    # temporal_decoder: the temporal layers added to the frame decoder
    temporal_kernel: int = 3  # frames each temporal 3-D convolution sees
    temporal_attention: bool = True  # temporal self-attention in the decoder's mid block
    finetune_spatial: bool = False  # also fine-tune the 2-D decoder (the encoder always stays frozen)


@dataclass(frozen=True)
class VAELossConfig:
    """The losses of `moviola train-vae` (section ``vae:``)."""

    recon: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6  # times the KL summed over each sample's latent, divided by its pixel count
    sample_posterior: bool = True  # decode a reparameterized sample (else the mean) in training
    adv_weight: float = 0.1  # 0 = no discriminator
    adv_start: int = 2000  # the step the adversarial loss (and the discriminator's training) starts at
    adaptive_weight: bool = True  # VQGAN: balance the adversarial gradient against the reconstruction's
    lecam_weight: float = 0.0  # LeCam regularization of the discriminator (W.A.L.T / MAGVIT-v2), e.g. 0.001
    lecam_decay: float = 0.999  # EMA decay of the discriminator outputs LeCam anchors to
    disc_channels: int = 64
    disc_layers: int = 3  # strided 3-D convolutions of the patch discriminator
    disc_lr_mult: float = 1.0  # discriminator learning rate = train.lr × this
    # optional LPIPS perceptual loss (VGG16), from local files only: torchvision's vgg16 state dict and,
    # for LPIPS's learned channel weights, the lpips package's vgg.pth (see training/perceptual.py)
    perceptual_weight: float = 0.0  # 0 = off
    perceptual_weights: tuple[str, ...] = ()  # the weight files (one file may hold both parts)
    perceptual_frames: int = 0  # frames per clip the loss sees, drawn at random (0 = all)
    latent_stats_batches: int = 16  # batches the exported latent normalization is measured on


AUTOENCODER_RANGES = (
    ("autoencoder.chunk_frames", 1, None), ("autoencoder.base_channels", 1, None),
    ("autoencoder.num_res_blocks", 1, None), ("autoencoder.latent_channels", 1, None),
    ("autoencoder.norm_groups", 1, None), ("vae.kl_weight", 0, None),
    ("vae.adv_weight", 0, None), ("vae.adv_start", 0, None), ("vae.lecam_weight", 0, None),
    ("vae.lecam_decay", 0, 0.999999), ("vae.disc_channels", 1, None), ("vae.disc_layers", 1, 8),
    ("vae.disc_lr_mult", 1e-12, None), ("vae.latent_stats_batches", 1, None), ("vae.perceptual_weight", 0, None),
    ("vae.perceptual_frames", 0, None),
)


def validate_autoencoder(ae: AutoencoderConfig, frames: int) -> None:
    """Reject an autoencoder section that cannot work (with ``data.frames`` frames) before any compute."""
    if ae.kind == "identity":
        return
    if ae.kind == "temporal_decoder" and ae.path is None:
        raise ConfigError("autoencoder.kind=temporal_decoder needs autoencoder.path: the trained frame VAE to add "
                          "temporal layers to (or an exported TemporalDecoderVAE)")
    if ae.temporal_kernel < 1 or ae.temporal_kernel % 2 == 0:
        raise ConfigError(f"autoencoder.temporal_kernel must be odd and positive, got {ae.temporal_kernel}")
    if ae.path is None:
        levels = len(ae.channel_mults)
        if levels < 1:
            raise ConfigError("autoencoder.channel_mults needs at least one level")
        if any(m < 1 for m in ae.channel_mults):
            raise ConfigError(f"autoencoder.channel_mults must be positive, got {list(ae.channel_mults)}")
        if any((ae.base_channels * m) % ae.norm_groups for m in ae.channel_mults):
            raise ConfigError(f"autoencoder.base_channels × channel_mults = "
                              f"{[ae.base_channels * m for m in ae.channel_mults]} must be divisible by "
                              f"autoencoder.norm_groups={ae.norm_groups}")
        if ae.kind == "causal_vae" and len(ae.temporal_downsample) != levels - 1:
            raise ConfigError(f"autoencoder.temporal_downsample needs {levels - 1} entries (one per level "
                              f"transition of channel_mults), got {list(ae.temporal_downsample)}")
    tf = autoencoder_temporal_factor(ae)
    if tf > 1:
        if (frames - 1) % tf:
            k = (frames - 1) // tf
            raise ConfigError(f"data.frames={frames} does not fit the causal VAE: it takes 1 + {tf}·k frames "
                              f"(e.g. {1 + tf * k} or {1 + tf * (k + 1)})")
        if ae.chunk_frames % tf:
            raise ConfigError(f"autoencoder.chunk_frames={ae.chunk_frames} must be a multiple of the causal VAE's "
                              f"temporal factor {tf}")


def latent_frames(ae: AutoencoderConfig, frames: int) -> int:
    """How many latent frames the model sees for ``frames`` pixel frames."""
    tf = autoencoder_temporal_factor(ae)
    return frames if tf == 1 else 1 + (frames - 1) // tf


def autoencoder_spatial_factor(cfg: AutoencoderConfig) -> int:
    """How many pixels one latent pixel covers, read from the VAE's config.json (no weights loaded)."""
    if cfg.kind == "identity":
        return 1
    if cfg.path is None:  # a new autoencoder: every level transition halves the frame
        return 2 ** (len(cfg.channel_mults) - 1)
    if cfg.kind == "causal_vae":
        return 2 ** sum(map(bool, _causal_config(cfg)["spatial_downsample"]))
    return 2 ** (len(_vae_config(cfg)["block_out_channels"]) - 1)


def autoencoder_temporal_factor(cfg: AutoencoderConfig) -> int:
    """How many frames one latent frame covers (after the first): 1 unless a causal VAE."""
    if cfg.kind != "causal_vae":
        return 1
    flags = cfg.temporal_downsample if cfg.path is None else _causal_config(cfg)["temporal_downsample"]
    return 2 ** sum(map(bool, flags))


def autoencoder_latent_channels(cfg: AutoencoderConfig) -> int:
    """Channels of the latents, read from the VAE's config.json (no weights loaded); 3 for identity."""
    if cfg.kind == "identity":
        return 3
    if cfg.path is None:
        return cfg.latent_channels
    if cfg.kind == "causal_vae":
        return int(_causal_config(cfg)["latent_channels"])
    return int(_vae_config(cfg).get("latent_channels", 4))  # diffusers' AutoencoderKL default


def _causal_config(cfg: AutoencoderConfig) -> dict:
    found = Path(cfg.path) / "config.json"
    try:
        c = json.loads(found.read_text())
        c["spatial_downsample"], c["temporal_downsample"], c["latent_channels"]
    except FileNotFoundError:
        raise ConfigError(f"autoencoder.path {cfg.path} has no config.json: expected a CausalVAE directory "
                          "(moviola export of a train-vae run)") from None
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{found} is not a CausalVAE config") from None
    return c


def _vae_config(cfg: AutoencoderConfig) -> dict:
    if not cfg.path:
        raise ConfigError("autoencoder.kind=frame_vae needs autoencoder.path "
                          "(a local diffusers-format AutoencoderKL directory)")
    root = Path(cfg.path)
    if cfg.kind == "temporal_decoder" and (root / "vae" / "config.json").is_file():
        root = root / "vae"  # a TemporalDecoderVAE directory keeps its base frame VAE in vae/
    found = next((p for p in (root / "config.json", root / "vae" / "config.json") if p.is_file()), None)
    if found is None:
        raise ConfigError(f"autoencoder.path {root} has no config.json (nor vae/config.json): "
                          "expected a local diffusers-format AutoencoderKL directory")
    try:
        vae = json.loads(found.read_text())
        len(vae["block_out_channels"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{found} is not an AutoencoderKL config (no block_out_channels)") from None
    return vae


def trains_autoencoder(ae: AutoencoderConfig) -> bool:
    """Whether a run with this section would train the autoencoder: a new one (no path), or temporal
    layers on a trained frame VAE. Used only to name the task of configs saved before ``train.task``."""
    if ae.kind == "temporal_decoder":
        meta = Path(ae.path) / "config.json" if ae.path else None
        return not (meta is not None and meta.is_file()
                    and json.loads(meta.read_text()).get("_class_name") == "TemporalDecoderVAE")
    return ae.kind != "identity" and ae.path is None
