"""Frozen dataclass configs, built from YAML with strict keys.

Every key a config file may hold is a dataclass field below; an unknown key is an error that
suggests the closest known one, a wrong type is an error that names the expected type, and
``RunConfig.validate`` rejects impossible shapes before any compute. ``to_dict`` gives the
resolved config that is saved beside every checkpoint, so a checkpoint rebuilds its own model.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""


# --------------------------------------------------------------------------------------------
# The configs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    family: Literal["latte"] = "latte"
    size: str = "tiny"  # a named size (tiny, S, B, L, XL); the fields below override it
    patch_size: int = 2
    hidden_size: Optional[int] = None
    depth: Optional[int] = None  # total transformer blocks (spatial + temporal), as Latte counts
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    num_classes: int = 0  # 0 = unconditional
    class_dropout_prob: float = 0.1  # probability of training with the null class (for guidance)
    learned_sigma: bool = False
    qk_norm: bool = False
    # Latte's design switches (paper §3.2-3.3); the defaults are the released model.
    variant: Literal[1, 2, 3, 4] = 1  # 1 interleaved, 2 late fusion, 3 factorized attention, 4 factorized heads
    patch_embed: Literal["frame", "tubelet"] = "frame"  # per-frame p×p patches, or s×p×p tubelets
    tubelet_size: int = 1  # s, the tubelet's temporal stride (patch_embed=tubelet)
    injection: Literal["adaln", "adaln_single", "tokens"] = "adaln"  # timestep/class: adaLN-Zero, PixArt, tokens
    temporal_pos: Literal["abs", "rope"] = "abs"  # absolute sin-cos, or RoPE in the temporal attention
    caption_channels: Optional[int] = None  # text width: cross-attention to text (Latte-1 T2V); None = no text
    # PixArt / diffusers' Latte-1 position scaling: a grid of n tokens gets positions i·base/n/scale.
    # null and 1.0 give integer positions (DiT, Latte); imported Latte-1 models set them.
    pos_base_size: Optional[int] = None
    pos_interpolation_scale: float = 1.0
    # also add the mask-mean of the text tokens to the timestep embedding (a global, adaLN-path
    # text condition beside the cross-attention, as Imagen and SD3 add a pooled embedding)
    text_pooled: bool = False
    # context frames (DESIGN.md): the input gets (m ∘ z, m) beside x_t, so frames given as conditions
    # steer the rest: image-to-video (the first frame), prediction (a prefix), interpolation (the ends)
    context_frames: bool = False
    context_dropout_prob: float = 0.1  # probability of training with no context given (for guidance)


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


@dataclass(frozen=True)
class TextConfig:
    """The text encoder of a text-conditioned model (``model.caption_channels`` set)."""

    encoder: str = "all-minilm-l6-v2"  # the packaged default, or a local transformers directory (T5, CLIP, ...)
    max_length: int = 32  # tokens; longer prompts are truncated with a warning
    layer: Literal["last", "penultimate"] = "last"  # which hidden states are the token embeddings
    dropout_prob: float = 0.1  # caption dropout: train with the empty prompt, the null condition of guidance
    cache: bool = True  # keep embeddings of every prompt on disk, keyed by encoder content and prompt
    cache_dir: Optional[str] = None  # default $MOVIOLA_CACHE or ~/.cache/moviola


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["shapes", "folder", "images"] = "shapes"  # folder: videos; images: one-frame videos
    root: Optional[str] = None  # folder datasets
    size: int = 32
    frames: int = 16
    frame_stride: int = 1
    count: int = 4800  # clips in the (procedural) training set
    seed: int = 0
    bounce: bool = False
    num_workers: int = 0
    use_image_num: int = 0  # image-video joint training: single frames of other clips after each video
    latent_cache: bool = False  # encode each clip once and keep its latent on disk (data/latent_cache.py)


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: Literal["linear", "scaled_linear", "cosine"] = "linear"
    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    zero_terminal_snr: bool = False
    prediction: Literal["eps", "v", "x0"] = "eps"
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = 5.0
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.999
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0 = never; otherwise score a few samples with the Moving Shapes judge
    sample_steps: int = 25
    seed: int = 0
    device: str = "auto"
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    max_failed_saves: int = 3  # consecutive failed checkpoint writes (disk full) before the run stops
    # which frames a context-frame model (model.context_frames) is given in training: the first
    # (image-to-video), a random prefix of 1..T/2 frames (prediction), the first and last
    # (interpolation), or any of the three per example
    context_mode: Literal["first", "prefix", "ends", "any"] = "first"


@dataclass(frozen=True)
class SampleConfig:
    sampler: Literal["ddim", "ddpm", "dpm++2m"] = "ddim"  # dpm++2m: DPM-Solver++(2M), ~20 steps
    steps: int = 50
    cfg: float = 4.0
    eta: float = 0.0


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vae: VAELossConfig = field(default_factory=VAELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> "RunConfig":
        """Reject impossible settings before any compute."""
        from moviola.models.registry import resolve_model_dims  # late import: no cycle

        m, d, t = self.model, self.data, self.train
        _check_ranges(self)
        if d.size <= 0 or d.frames <= 0:
            raise ConfigError(f"data.size and data.frames must be positive (got {d.size}, {d.frames})")
        self._validate_autoencoder()
        factor = autoencoder_spatial_factor(self.autoencoder)
        if d.size % (m.patch_size * factor) != 0:
            raise ConfigError(
                f"data.size={d.size} is not divisible by model.patch_size × autoencoder factor "
                f"= {m.patch_size}×{factor}; pick a size that is a multiple of {m.patch_size * factor}")
        if d.dataset in ("folder", "images") and not d.root:
            raise ConfigError(f"data.dataset={d.dataset} needs data.root (a folder of "
                              f"{'videos' if d.dataset == 'folder' else 'images'})")
        if d.dataset == "images" and d.frames != 1:
            raise ConfigError(f"data.dataset=images gives one-frame videos: set data.frames=1 (got {d.frames})")
        resolve_model_dims(m)  # raises on an unknown size or heads not dividing width
        for name, value in (("train.steps", t.steps), ("train.batch_size", t.batch_size),
                            ("train.checkpoint_every", t.checkpoint_every),
                            ("train.log_every", t.log_every), ("train.keep_last", t.keep_last),
                            ("diffusion.num_timesteps", self.diffusion.num_timesteps),
                            ("sample.steps", self.sample.steps)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive (got {value})")
        for name, value in (("sample.steps", self.sample.steps), ("train.sample_steps", t.sample_steps)):
            if value > self.diffusion.num_timesteps:
                raise ConfigError(f"{name}={value} is more than diffusion.num_timesteps="
                                  f"{self.diffusion.num_timesteps}: a sampler cannot take more steps than the schedule has")
        if d.dataset == "shapes" and m.num_classes not in (0, 48):
            raise ConfigError(f"model.num_classes={m.num_classes} does not fit Moving Shapes, which has 48 classes "
                              "(use 48, or 0 for an unconditional model)")
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (got {t.ema_decay})")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be positive (got {t.lr})")
        for name, value in (("model.class_dropout_prob", m.class_dropout_prob),
                            ("model.context_dropout_prob", m.context_dropout_prob),
                            ("text.dropout_prob", self.text.dropout_prob)):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1) (got {value})")
        if m.text_pooled and not m.caption_channels:
            raise ConfigError("model.text_pooled needs a text model: set model.caption_channels (the encoder's width)")
        if self.text.max_length < 2:
            raise ConfigError(f"text.max_length must be at least 2 (got {self.text.max_length})")
        self._validate_latte_switches()
        return self

    def _validate_autoencoder(self) -> None:
        ae, d = self.autoencoder, self.data
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
            if (d.frames - 1) % tf:
                k = (d.frames - 1) // tf
                raise ConfigError(f"data.frames={d.frames} does not fit the causal VAE: it takes 1 + {tf}·k frames "
                                  f"(e.g. {1 + tf * k} or {1 + tf * (k + 1)})")
            if ae.chunk_frames % tf:
                raise ConfigError(f"autoencoder.chunk_frames={ae.chunk_frames} must be a multiple of the causal VAE's "
                                  f"temporal factor {tf}")

    def _validate_latte_switches(self) -> None:
        from moviola.models.registry import resolve_model_dims  # late import: no cycle

        m, d = self.model, self.data
        if m.patch_embed == "frame" and m.tubelet_size != 1:
            raise ConfigError(f"model.tubelet_size={m.tubelet_size} needs model.patch_embed=tubelet "
                              "(per-frame patches have tubelet_size 1)")
        if m.tubelet_size < 1:
            raise ConfigError(f"model.tubelet_size must be at least 1 (got {m.tubelet_size})")
        tf = autoencoder_temporal_factor(self.autoencoder)
        latent_frames = d.frames if tf == 1 else 1 + (d.frames - 1) // tf  # what the model sees
        if latent_frames % m.tubelet_size:
            raise ConfigError(f"{latent_frames} {'latent ' if tf > 1 else ''}frames (data.frames={d.frames}) are not "
                              f"divisible by model.tubelet_size={m.tubelet_size}")
        if d.use_image_num and tf > 1:
            raise ConfigError("data.use_image_num (joint image training) with a causal VAE is not supported: its "
                              "latent frames each cover several frames, so single images cannot be appended")
        dims = resolve_model_dims(m)
        if m.temporal_pos == "rope" and (dims.hidden_size // dims.num_heads) % 2:
            raise ConfigError(f"model.temporal_pos=rope needs an even head width; hidden_size/num_heads = "
                              f"{dims.hidden_size}/{dims.num_heads} is odd")
        if m.caption_channels is not None and m.caption_channels <= 0:
            raise ConfigError(f"model.caption_channels must be positive or null (got {m.caption_channels})")
        if m.pos_base_size is not None and m.pos_base_size <= 0:
            raise ConfigError(f"model.pos_base_size must be positive or null (got {m.pos_base_size})")
        if m.pos_interpolation_scale <= 0:
            raise ConfigError(f"model.pos_interpolation_scale must be positive (got {m.pos_interpolation_scale})")
        if d.use_image_num < 0:
            raise ConfigError(f"data.use_image_num must be 0 or more (got {d.use_image_num})")
        if d.use_image_num and m.patch_embed != "frame":
            raise ConfigError("data.use_image_num > 0 (image-video joint training) needs model.patch_embed=frame: "
                              "a single image cannot fill a tubelet")
        if d.use_image_num and d.dataset == "shapes" and d.count < 2:
            raise ConfigError("data.use_image_num > 0 takes its images from other clips: data.count must be at least 2")


def _numbers(cfg: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, tuple):
            yield from ((f"{prefix}{f.name}[{i}]", v) for i, v in enumerate(value))
        else:
            yield f"{prefix}{f.name}", value


# (key, lowest allowed, highest allowed); None = unbounded on that side. The few upper bounds are far
# beyond any real run; they turn an absurd value into this error instead of an hour-long hang or an
# allocation failure (data.count sizes a permutation, num_timesteps the schedule tables).
_RANGES: tuple[tuple[str, Optional[float], Optional[float]], ...] = (
    ("data.count", 1, 10**7), ("diffusion.num_timesteps", 1, 100_000), ("train.batch_size", 1, 65_536),
    ("train.lr", 0, 1000),  # AdamW's float32 arithmetic overflows on absurd rates
    ("model.patch_size", 1, None), ("model.hidden_size", 1, None), ("model.depth", 1, None),
    ("model.num_heads", 1, None), ("model.mlp_ratio", 1e-6, None), ("model.num_classes", 0, None),
    ("autoencoder.chunk_frames", 1, None), ("data.frame_stride", 1, None),
    ("data.seed", 0, 2**32 - 1), ("data.num_workers", 0, 256), ("diffusion.beta_start", 1e-12, 0.999),
    ("diffusion.beta_end", 1e-12, 0.999), ("diffusion.min_snr_gamma", 1e-12, None),
    ("train.weight_decay", 0, 1000), ("train.betas[0]", 0, 0.999999), ("train.betas[1]", 0, 0.999999),
    ("train.warmup_steps", 0, None), ("train.min_lr_ratio", 0, 1), ("train.grad_clip", 0, None),
    ("train.sample_every", 0, None), ("train.sample_steps", 1, None), ("train.seed", 0, 2**32 - 1),
    ("train.max_bad_steps", 1, None), ("train.max_failed_saves", 1, None), ("sample.eta", 0, None),
    ("autoencoder.base_channels", 1, None), ("autoencoder.num_res_blocks", 1, None),
    ("autoencoder.latent_channels", 1, None), ("autoencoder.norm_groups", 1, None), ("vae.kl_weight", 0, None),
    ("vae.adv_weight", 0, None), ("vae.adv_start", 0, None), ("vae.lecam_weight", 0, None),
    ("vae.lecam_decay", 0, 0.999999), ("vae.disc_channels", 1, None), ("vae.disc_layers", 1, 8),
    ("vae.disc_lr_mult", 1e-12, None), ("vae.latent_stats_batches", 1, None), ("vae.perceptual_weight", 0, None),
    ("vae.perceptual_frames", 0, None),
)


def _check_ranges(cfg: "RunConfig") -> None:
    """Finite numbers and sane ranges: a NaN learning rate or a zero patch is an error, not a crash."""
    values = dict(_numbers(cfg))
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number (got {value})")
    for key, low, high in _RANGES:
        value = values[key]
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"between {low} and {high}" if low is not None and high is not None
                      else f"at least {low}" if low is not None else f"at most {high}")
            raise ConfigError(f"{key} must be {bounds} (got {value})")
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\\0"):
        raise ConfigError(f"name {cfg.name!r} must be a plain directory name (it names runs/<name>)")


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


# --------------------------------------------------------------------------------------------
# Building configs from dictionaries, strictly
# --------------------------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert YAML's loose types where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: null is not allowed (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        options = typing.get_args(tp)
        if not any(value == o and type(value) is type(o) for o in options):  # true is not 1, 1.0 is not 1
            close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{key}: {value!r} is not one of {list(options)}{hint}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: any length
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    out = dataclasses.asdict(cfg)
    return json.loads(json.dumps(out))  # tuples -> lists, a plain JSON-able tree


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 floats: ``1e-4`` is the number 0.0001, not a string.

    PyYAML follows YAML 1.1, whose float pattern needs a dot (``1.0e-4``), so ``lr: 1e-4``
    would load as the string '1e-4' and fail the type check.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"""),
    list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def _merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, section by section (a partial section keeps the other keys)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (so 3, 1e-4, true, [1, 2] keep their types)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = _yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None,
                data: Optional[dict] = None) -> RunConfig:
    """Read a YAML (or JSON) run config, apply ``key=value`` overrides, validate."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = _yaml_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    if data is not None:
        tree = _merge(tree, data)
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    return absolute_paths(from_dict(RunConfig, tree)).validate()


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Make ``autoencoder.path``, ``data.root``, a text encoder's directory and the perceptual loss's weight files
    absolute (relative to the working directory),
    so the config saved beside a checkpoint finds them from any directory."""
    ae, data = cfg.autoencoder, cfg.data
    if ae.path:
        ae = dataclasses.replace(ae, path=str(Path(ae.path).expanduser().absolute()))
    if data.root:
        data = dataclasses.replace(data, root=str(Path(data.root).expanduser().absolute()))
    text = cfg.text
    if Path(text.encoder).expanduser().exists():  # a directory, not a packaged encoder's name
        text = dataclasses.replace(text, encoder=str(Path(text.encoder).expanduser().absolute()))
    if text.cache_dir:
        text = dataclasses.replace(text, cache_dir=str(Path(text.cache_dir).expanduser().absolute()))
    vae = cfg.vae
    if vae.perceptual_weights:
        vae = dataclasses.replace(vae, perceptual_weights=tuple(str(Path(p).expanduser().absolute())
                                                                for p in vae.perceptual_weights))
    return dataclasses.replace(cfg, autoencoder=ae, data=data, text=text, vae=vae)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config; a temporary file and a rename, so a crash never leaves half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    os.replace(tmp, path)


def config_from_json(path: Union[str, Path]) -> RunConfig:
    """A saved config (a run's or a checkpoint's config.json), validated.

    A relative ``autoencoder.path`` is looked up next to the file first, then in the current
    directory: an exported checkpoint names its autoencoder relative to itself (``moviola export``
    writes it so), and then loads from any working directory. (Training writes absolute paths.)
    """
    data = json.loads(Path(path).read_text())
    ae = data.get("autoencoder") if isinstance(data, dict) else None
    if isinstance(ae, dict) and isinstance(ae.get("path"), str) and ae["path"]:
        ae["path"] = str(locate_autoencoder(ae["path"], Path(path).parent))
    return from_dict(RunConfig, data).validate()


def locate_autoencoder(path: Union[str, Path], checkpoint_dir: Union[str, Path]) -> Path:
    """Where a checkpoint's ``autoencoder.path`` points: relative to the checkpoint directory if it exists
    there, else as given (absolute, or relative to the working directory). Symlinks are followed."""
    path = Path(path).expanduser()
    if not path.is_absolute() and (Path(checkpoint_dir) / path).exists():
        return (Path(checkpoint_dir) / path).resolve()
    return path
