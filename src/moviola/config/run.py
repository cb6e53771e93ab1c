"""The run config: every section a YAML file may hold, and the checks across them.

``RunConfig.validate`` rejects impossible settings before any compute; the family's own rules
are its ``model.validate(run)`` (config/models.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from moviola.config.autoencoder import (AUTOENCODER_RANGES, AutoencoderConfig, VAELossConfig,
                                        autoencoder_spatial_factor, validate_autoencoder)
from moviola.config.base import ConfigError, check_ranges, numbers
from moviola.config.models import LatteConfig, model_config_from_dict


@dataclass(frozen=True)
class ConditionsConfig:
    """What a run conditions on, whatever the family, and each condition's training dropout (the
    probability of training with its null value, which classifier-free guidance compares against)."""

    num_classes: int = 0  # class labels 0..n-1 (0 = no labels)
    label_dropout: float = 0.1
    text_channels: Optional[int] = None  # the text encoder's width: cross-attention to text (None = no text)
    text_dropout: float = 0.1  # train with the empty prompt
    # context frames (DESIGN.md): the input gets (m ∘ z, m) beside x_t, so frames given as conditions
    # steer the rest: image-to-video (the first frame), prediction (a prefix), interpolation (the ends)
    context_frames: bool = False
    # which frames training gives: the first (image-to-video), a random prefix of 1..T/2 frames
    # (prediction), the first and last (interpolation), or any of these three per example; prefix2:
    # the first 1 or 2 frames (Video LDM's prediction model: 0, 1 or 2 with context_dropout);
    # keyframes: every 4th frame, 0, 4, 8, ... (Video LDM's interpolation model, T -> 4T)
    context_mode: Literal["first", "prefix", "ends", "prefix2", "keyframes", "any"] = "first"
    context_dropout: float = 0.1  # train with no frame given
    # image tokens from the run's frozen image encoder (image.encoder: CLIP) of each clip's frame 0, through
    # VideoCrafter's resampler (model.image_encoder=tokens: VideoCrafter1's image-to-video)
    image: bool = False
    # train with the null image (all-zero tokens), drawn per example independently of the other dropouts, as
    # text_dropout and context_dropout are: guidance's null branch (the empty prompt and no image) is then trained
    # on text_dropout × image_dropout of the examples (1 % at the defaults); raise both for stronger guidance
    image_dropout: float = 0.1
    # the clip's frame rate, data.fps / its frame stride (data/strides.py), embedded and added to the timestep's
    # (VideoCrafter's fps_cond); never dropped in training (not a guidance target). Sampling: pipe(fps=...)
    fps: bool = False
    # a low-resolution video to upsample (super-resolution cascades: Video LDM's temporally aligned upsampler,
    # W.A.L.T's latent SR): training encodes each clip area-downsampled by low_res_factor with the run's
    # autoencoder, and the model gets that latent beside x_t (training/trainer.py); pipe(low_res=VIDEO)
    low_res: bool = False
    # how much smaller the low-resolution clip is (pixels and latents alike): the upsampler's factor. W.A.L.T's
    # depth-to-space upsample doubles h and w, so it takes 2 only; a U-Net resizes any low-res latent
    low_res_factor: int = 2
    # noise-conditioning augmentation (Imagen, Video LDM, W.A.L.T): the low-resolution latent is noised to a
    # level s of the run's schedule, drawn per example uniformly in [0, noise_level_max], and the model is told s.
    # So it learns to trust the input less the noisier it is, and a first stage's imperfect samples (or a video
    # of other statistics) look like training inputs. 250: on the default linear schedule sqrt(ᾱ_250) ≈ 0.72 and
    # sqrt(1 − ᾱ_250) ≈ 0.69, so the strongest augmentation still leaves as much signal as noise, while the
    # model sees every level it is sampled at (sample.noise_level); Stable Diffusion's ×4 upscaler goes to 350
    # on the same schedule, where noise dominates (0.53 / 0.85)
    noise_level: bool = False
    noise_level_max: int = 250
    self_cond: float = 0.0  # self-conditioning: the rate of training steps given the previous x0 estimate

    def wanted(self) -> list[str]:
        """Names of the conditions this run uses (as a family's config lists what it can take)."""
        flags = {"labels": self.num_classes > 0, "text": self.text_channels is not None,
                 "context_frames": self.context_frames, "image": self.image, "fps": self.fps,
                 "low_res": self.low_res, "noise_level": self.noise_level, "self_cond": self.self_cond > 0}
        return [name for name, on in flags.items() if on]


@dataclass(frozen=True)
class TextConfig:
    """The text encoder of a text-conditioned run (``conditions.text_channels`` set)."""

    encoder: str = "all-minilm-l6-v2"  # the packaged default, or a local transformers directory (T5, CLIP, ...)
    max_length: int = 32  # tokens; longer prompts are truncated with a warning
    layer: Literal["last", "penultimate"] = "last"  # which hidden states are the token embeddings
    cache: bool = True  # keep embeddings of every prompt on disk, keyed by encoder content and prompt
    cache_dir: Optional[str] = None  # default $MOVIOLA_CACHE or ~/.cache/moviola


@dataclass(frozen=True)
class ImageConfig:
    """The frozen image encoder of an image-token run (``conditions.image``, VideoCrafter's
    ``model.image_encoder: tokens``): training encodes each clip's frame 0 with it, ``pipe(image=...)`` the given
    first frame (conditioning/image.py)."""

    # a local transformers CLIP vision directory (CLIPVisionModel[WithProjection], a whole CLIPModel, or a
    # diffusers pipeline root with image_encoder/); its tokens are all of its last layer's, so its hidden size
    # must be model.image_token_dim. null: no image encoder (conditions.image needs one to train or to sample
    # from an image; a model fed Conditioning.image_tokens from the Python API needs none)
    encoder: Optional[str] = None


@dataclass(frozen=True)
class ShapesPalette:
    """Moving Shapes drawn in other colours (``data.palette``): a colour word's RGB, 0..255, where it is set. The
    captions and labels keep their words, so a model learns the word for the new colour: the personalization and
    style fine-tunes of Video LDM and VideoCrafter2 (e.g. ``{red: [230, 50, 230]}``: red drawn magenta)."""

    red: Optional[tuple[int, int, int]] = None
    green: Optional[tuple[int, int, int]] = None
    blue: Optional[tuple[int, int, int]] = None
    yellow: Optional[tuple[int, int, int]] = None

    def colours(self) -> dict[str, tuple[int, int, int]]:
        """The colours it changes, word -> RGB."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DataConfig:
    # folder: videos; images: one-frame videos; frames: folders of frames; ucf101: UCF-101's official layout
    dataset: Literal["shapes", "folder", "images", "frames", "ucf101"] = "shapes"
    root: Optional[str] = None  # folder datasets
    # folder/images/frames: a manifest listing the items and their captions (relative to data.root unless absolute):
    # JSONL (file|path, caption|text), CSV path,text (Open-Sora) or WebVid's (docs/own-data.md); null: walk data.root
    captions: Optional[str] = None
    split: Literal["train", "test"] = "train"  # ucf101: which list of the official split
    ucf_split: int = 1  # ucf101: official split 1, 2 or 3 (trainlist0N.txt / testlist0N.txt)
    split_file: Optional[str] = None  # ucf101: this list instead (relative to data.root unless absolute)
    size: int = 32
    frames: int = 16
    frame_stride: int = 1  # every clip takes every n-th frame of its source (Moving Shapes: of a longer clip)
    # one stride per clip, drawn from this list as a pure function of (data.seed, the clip): the same in every
    # epoch and run (data/strides.py); null = data.frame_stride for every clip. With conditions.fps a clip at
    # stride s is conditioned on data.fps / s, and sampling defaults to data.fps / frame_strides[0]
    frame_strides: Optional[tuple[int, ...]] = None
    # the native frame rate of the data: Moving Shapes' is 8 (../shared/moving_shapes.md, and the rate moviola
    # writes videos at); set a folder's own (e.g. 24 or 30)
    fps: float = 8.0
    # where a folder's clip starts in its file: frame 0, or a start drawn once per file from (seed, index),
    # the same in every epoch and run (data/folders.py)
    clip_start: Literal["first", "random"] = "first"
    count: int = 4800  # clips in the (procedural) training set
    seed: int = 0  # Moving Shapes: the clips; a folder with clip_start=random: where each clip starts
    bounce: bool = False
    num_workers: int = 0
    use_image_num: int = 0  # image-video joint training: single frames of other clips after each video
    # which clips a video's joint images come from in a run with text (captions are per video): clips with
    # the video's caption, so the prompt is true of them, or any clip (what runs saved before this key did)
    image_captions: Literal["same", "any"] = "same"
    latent_cache: bool = False  # encode each clip once and keep its latent on disk (data/latent_cache.py)
    palette: Optional[ShapesPalette] = None  # Moving Shapes: colour words drawn in other RGB values (null: the spec's)


@dataclass(frozen=True)
class X0ScaleConfig:
    """VideoCrafter's ``use_scale`` (lvdm/models/ddpm3d.py, ``LatentDiffusion``): the forward process multiplies x0
    by ``s_t``, ramping linearly from ``scale_a`` to ``scale_b`` over the first ``mid_step`` timesteps
    (``np.linspace(scale_a, scale_b, mid_step)``) and ``scale_b`` after; the samplers mirror it (diffusion/).
    VideoCrafter2 and VC1 I2V 512: ``{scale_a: 1, scale_b: 0.7, mid_step: 400}``; VC1 T2V 1024: ``scale_b: 0.3``
    (its ``fix_scale_bug`` changes no value the process reads)."""

    scale_a: float = 1.0
    scale_b: float = 0.7
    mid_step: int = 400


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
    # added to every `leading` timestep (diffusers' steps_offset; LDM / VideoCrafter DDIM: 1, visiting 981 ... 1)
    steps_offset: int = 0
    # where the last DDIM / DPM-Solver step lands: one = the clean sample (alpha_cumprod 1), first = alphas_cumprod[0]
    # (diffusers' set_alpha_to_one=False; LDM / VideoCrafter DDIM)
    final_alpha: Literal["one", "first"] = "one"
    # VideoCrafter's use_scale (X0ScaleConfig): x0 scaled by s_t in training and mirrored by the samplers; null = off
    x0_scale: Optional[X0ScaleConfig] = None


@dataclass(frozen=True)
class TrainConfig:
    task: Literal["diffusion", "autoencoder"] = "diffusion"  # what the run trains (moviola train / train-vae)
    stage: Literal["all", "temporal", "spatial"] = "all"  # which of the model's parameters train (the rest frozen)
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
    # auto: bf16 where the device runs it natively (CUDA 8.0+, a CPU with AVX512_BF16 or AMX), else fp32;
    # decided when a run starts (utils.resolve_precision), so a resumed run on another machine decides again
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    sample_every: int = 0  # 0 = never; otherwise score a few samples with the Moving Shapes judge
    sample_steps: int = 25
    seed: int = 0
    device: str = "auto"
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    max_failed_saves: int = 3  # consecutive failed checkpoint writes (disk full) before the run stops
    # patch training (Video LDM's upsampler, "trained on patches, applied convolutionally"): each example is a
    # random crop×crop window of its latent, the same for all frames (a U-Net family only: its weights do not
    # depend on the frame size); a low-resolution latent is cropped at the matching window. 0 = whole frames
    crop: int = 0
    # data parallel (docs/scale.md): none = one process; ddp = DistributedDataParallel, one process per device,
    # launched by torchrun (or moviola train --nproc N). train.batch_size is the batch of one process and one
    # micro-step: a step's global batch is batch_size × processes × grad_accum
    parallel: Literal["none", "ddp"] = "none"
    grad_accum: int = 1  # micro-batches per optimizer step (gradients summed; DDP syncs on the last one only)


@dataclass(frozen=True)
class SampleConfig:
    sampler: Literal["ddim", "ddpm", "dpm++2m"] = "ddim"  # dpm++2m: DPM-Solver++(2M), ~20 steps
    steps: int = 50
    cfg: float = 4.0
    eta: float = 0.0
    # an upsampler's noise-augmentation level (conditions.noise_level): pipe(low_res=...) noises the low-resolution
    # latent to it and tells the model. 50 (sqrt(1 − ᾱ) ≈ 0.17 on the default linear schedule) hides the small
    # mismatch between a given or generated low-resolution video and the training data while keeping nearly
    # all of its detail; raise it (100-150) for a first stage's artifacts, 0 for a clean input kept exactly
    noise_level: int = 50


# families whose low-resolution input takes one factor only: W.A.L.T's depth-to-space upsample doubles h and w
# (models/walt/model.py). (A class attribute of the family's config would be its home: config/models.py.)
FIXED_LOW_RES_FACTORS = {"walt": 2}

# (key, lowest allowed, highest allowed); None = unbounded on that side. The few upper bounds are far
# beyond any real run; they turn an absurd value into this error instead of an hour-long hang or an
# allocation failure (data.count sizes a permutation, num_timesteps the schedule tables).
RUN_RANGES = (
    ("data.count", 1, 10**7), ("diffusion.num_timesteps", 1, 100_000), ("train.batch_size", 1, 65_536),
    ("train.lr", 0, 1000),  # AdamW's float32 arithmetic overflows on absurd rates
    ("conditions.num_classes", 0, None), ("data.frame_stride", 1, None),
    ("data.seed", 0, 2**32 - 1), ("data.num_workers", 0, 256), ("diffusion.beta_start", 1e-12, 0.999),
    ("diffusion.beta_end", 1e-12, 0.999), ("diffusion.min_snr_gamma", 1e-12, None),
    ("train.weight_decay", 0, 1000), ("train.betas[0]", 0, 0.999999), ("train.betas[1]", 0, 0.999999),
    ("train.warmup_steps", 0, None), ("train.min_lr_ratio", 0, 1), ("train.grad_clip", 0, None),
    ("train.sample_every", 0, None), ("train.sample_steps", 1, None), ("train.seed", 0, 2**32 - 1),
    ("train.max_bad_steps", 1, None), ("train.max_failed_saves", 1, None), ("sample.eta", 0, None),
    ("diffusion.steps_offset", 0, None), ("diffusion.x0_scale.scale_a", 1e-12, None),
    ("diffusion.x0_scale.scale_b", 1e-12, None), ("diffusion.x0_scale.mid_step", 0, None),
    ("conditions.low_res_factor", 1, 64), ("conditions.noise_level_max", 0, None), ("sample.noise_level", 0, None),
    ("train.crop", 0, None),
    *AUTOENCODER_RANGES,
)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: Any = field(default_factory=LatteConfig, metadata={"build": model_config_from_dict})
    conditions: ConditionsConfig = field(default_factory=ConditionsConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)  # (a config saved before this section: no encoder)
    vae: VAELossConfig = field(default_factory=VAELossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def validate(self) -> "RunConfig":
        """Reject impossible settings before any compute."""
        d, t = self.data, self.train
        values = dict(numbers(self))
        check_ranges(values, RUN_RANGES + getattr(self.model, "RANGES", ()))
        if not self.name or self.name in (".", "..") or any(ch in self.name for ch in "/\\\0"):
            raise ConfigError(f"name {self.name!r} must be a plain directory name (it names runs/<name>)")
        if d.size <= 0 or d.frames <= 0:
            raise ConfigError(f"data.size and data.frames must be positive (got {d.size}, {d.frames})")
        validate_autoencoder(self.autoencoder, d.frames)
        if d.dataset in ("folder", "images") and not d.root:
            raise ConfigError(f"data.dataset={d.dataset} needs data.root (a folder of "
                              f"{'videos' if d.dataset == 'folder' else 'images'})")
        if d.dataset == "images" and d.frames != 1:
            raise ConfigError(f"data.dataset=images gives one-frame videos: set data.frames=1 (got {d.frames})")
        self._validate_strides()
        if d.palette is not None:
            if d.dataset != "shapes":
                raise ConfigError(f"data.palette recolours Moving Shapes: it applies to data.dataset=shapes, not "
                                  f"{d.dataset}")
            for word, rgb in d.palette.colours().items():
                if not all(0 <= v <= 255 for v in rgb):
                    raise ConfigError(f"data.palette.{word}={list(rgb)}: RGB values are 0..255")
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
        self._validate_sampling()
        if not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1) (got {t.ema_decay})")
        if t.lr <= 0:
            raise ConfigError(f"train.lr must be positive (got {t.lr})")
        self._validate_conditions()
        self._validate_image_encoder()
        if self.text.max_length < 2:
            raise ConfigError(f"text.max_length must be at least 2 (got {self.text.max_length})")
        if d.use_image_num < 0:
            raise ConfigError(f"data.use_image_num must be 0 or more (got {d.use_image_num})")
        # with a causal VAE each image is encoded alone, as a one-frame video: one latent frame (training/trainer.py)
        if d.use_image_num and not getattr(self.model, "joint_images", False):
            raise ConfigError(f"data.use_image_num > 0 (image-video joint training): the {self.model.family} family "
                              "does not take appended image frames")
        if d.use_image_num and d.dataset == "shapes" and d.count < 2:
            raise ConfigError("data.use_image_num > 0 takes its images from other clips: data.count must be at least 2")
        if t.task == "autoencoder":  # the model: section is not used: its rules do not apply
            if t.stage != "all":
                raise ConfigError(f"train.stage={t.stage} selects a denoiser's parameters; an autoencoder run "
                                  "(train.task=autoencoder) trains what its autoencoder section says: leave it at all")
            return self
        self.model.validate(self)
        return self

    def _validate_sampling(self) -> None:
        """The diffusion section's sampling keys against each other, the sampler and the model."""
        d, n = self.diffusion, self.diffusion.num_timesteps
        if d.steps_offset and d.timestep_spacing != "leading":
            raise ConfigError(f"diffusion.steps_offset={d.steps_offset} shifts `leading` timesteps only; "
                              f"diffusion.timestep_spacing is {d.timestep_spacing} (set it to leading, or the offset to 0)")
        for name, steps in (("sample.steps", self.sample.steps), ("train.sample_steps", self.train.sample_steps)):
            last = (steps - 1) * (n // steps) + d.steps_offset
            if d.steps_offset and last >= n:
                raise ConfigError(f"{name}={steps} with diffusion.steps_offset={d.steps_offset} visits timestep "
                                  f"{last}, past the schedule's last ({n - 1}): take fewer steps")
        if d.x0_scale is None:
            return
        if d.x0_scale.mid_step > n:
            raise ConfigError(f"diffusion.x0_scale.mid_step={d.x0_scale.mid_step} is more than diffusion.num_timesteps="
                              f"{n}: the ramp of the x0 scale lies within the schedule")
        if self.sample.sampler == "ddpm":
            raise ConfigError("sample.sampler=ddpm has no step for diffusion.x0_scale (VideoCrafter's use_scale: the "
                              "official code defines only DDIM's): use ddim (eta 1.0 is the official sampler) or dpm++2m")
        if self.train.task == "diffusion" and getattr(self.model, "learned_sigma", False):
            raise ConfigError("model.learned_sigma (IDDPM's variance term) is not defined with diffusion.x0_scale: "
                              "set model.learned_sigma: false, or diffusion.x0_scale: null")

    def _validate_strides(self) -> None:
        d = self.data
        if not d.fps > 0:
            raise ConfigError(f"data.fps must be a positive number: the data's native frame rate (got {d.fps})")
        if d.frame_strides is None:
            return
        if not d.frame_strides:
            raise ConfigError("data.frame_strides is empty: list the frame strides to draw from (e.g. [1, 2, 3]), "
                              "or null for data.frame_stride on every clip")
        bad = [s for s in d.frame_strides if s < 1]
        if bad:
            raise ConfigError(f"data.frame_strides must be positive integers (got {bad[0]} in {list(d.frame_strides)})")
        if d.frame_stride != 1:
            raise ConfigError(f"data.frame_stride={d.frame_stride} and data.frame_strides={list(d.frame_strides)}: "
                              "give one of them (a list of one stride is data.frame_stride)")
        if d.dataset == "images":
            raise ConfigError("data.frame_strides draws a frame stride per video clip: data.dataset=images has "
                              "one-frame videos (leave it null)")

    def _validate_conditions(self) -> None:
        c = self.conditions
        for name in ("label_dropout", "text_dropout", "context_dropout", "image_dropout", "self_cond"):
            value = getattr(c, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"conditions.{name} must be in [0, 1) (got {value})")
        if c.text_channels is not None and c.text_channels <= 0:
            raise ConfigError(f"conditions.text_channels must be positive or null (got {c.text_channels})")
        if self.train.task != "diffusion":
            return
        family, takes = self.model.family, self.model.takes
        missing = [name for name in c.wanted() if name not in takes]
        if missing:
            raise ConfigError(f"the {family} family does not take the condition(s) {missing} (conditions.*); "
                              f"it takes {sorted(takes)}")
        self._validate_upsampler()

    def _validate_image_encoder(self) -> None:
        """An image encoder is named only for a run that conditions on image tokens. (That such a run names one is
        :meth:`require_image_encoder`, asked where tokens are made from images: a new config, training, sampling
        from an image. A checkpoint converted from the official weights, or fed tokens from the Python API, has
        none.)"""
        encoder = self.image.encoder
        if encoder is not None and not encoder.strip():
            raise ConfigError("image.encoder is empty: give the local directory of a transformers CLIP vision model, "
                              "or null for none")
        if encoder is not None and not self.conditions.image:
            raise ConfigError(f"image.encoder={encoder} is set but conditions.image is false: the encoder's tokens "
                              "condition a model only with conditions.image=true (and model.image_encoder=tokens); "
                              "set it, or remove image.encoder")

    def require_image_encoder(self) -> "RunConfig":
        """``conditions.image`` needs ``image.encoder``, wherever image tokens are made from pixels; returns self."""
        if self.conditions.image and self.image.encoder is None:
            raise ConfigError("conditions.image=true needs image.encoder: the local directory of a transformers CLIP "
                              "vision model whose token width is model.image_token_dim (tokens are made from each "
                              "clip's first frame)")
        return self

    def _validate_upsampler(self) -> None:
        """The low-resolution input (conditions.low_res), its noise levels and the patch crop (train.crop): sizes
        that divide, levels inside the schedule. Whether the family can take a crop is the trainer's check."""
        c, d, n = self.conditions, self.data, self.diffusion.num_timesteps
        factor, ae = c.low_res_factor, autoencoder_spatial_factor(self.autoencoder)
        if c.low_res:
            fixed = FIXED_LOW_RES_FACTORS.get(self.model.family)
            if fixed is not None and factor != fixed:
                raise ConfigError(f"conditions.low_res_factor={factor}: the {self.model.family} family takes a "
                                  f"low-resolution latent exactly 1/{fixed} of the frame's: set it to {fixed}")
            if d.size % (factor * ae):
                raise ConfigError(f"data.size={d.size} is not divisible by conditions.low_res_factor × autoencoder "
                                  f"factor = {factor}×{ae}: the low-resolution clip must encode to whole latent "
                                  f"pixels; pick a multiple of {factor * ae}")
        if c.noise_level:
            for key, level in (("conditions.noise_level_max", c.noise_level_max),
                               ("sample.noise_level", self.sample.noise_level)):
                if level >= n:
                    raise ConfigError(f"{key}={level} is not a timestep of the schedule (diffusion.num_timesteps={n}): "
                                      f"pick a level from 0 to {n - 1}")
        crop = self.train.crop
        if crop:
            latent = d.size // ae
            if crop > latent:
                raise ConfigError(f"train.crop={crop} is larger than the latent frame ({latent}×{latent}: data.size="
                                  f"{d.size} / autoencoder factor {ae}): pick at most {latent}, or 0 for whole frames")
            if c.low_res and crop % factor:
                raise ConfigError(f"train.crop={crop} is not divisible by conditions.low_res_factor={factor}: the "
                                  "low-resolution latent is cropped at the matching window, crop / factor; pick a "
                                  f"multiple of {factor}")
