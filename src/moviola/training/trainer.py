"""The diffusion task (``train.task: diffusion``, ``moviola train``): a denoiser learns to undo noise
on the latents of the run's autoencoder. The run loop around it is ``loop.py``.

Each step draws its timesteps, noise and condition dropout from a generator seeded by
``(train.seed, step)``, so a resumed run repeats them exactly. A step's global batch is made of
``S = processes × train.grad_accum`` shards of ``train.batch_size`` examples: shard
``s = rank · grad_accum + micro`` reads the ``s``-th slice of the global batch (``batch_indices``
with ``S`` slices) and draws from its own generator, seeded by :func:`draw_seed` ``(seed, step, s)``.
Shard 0 is seeded as one process always was, so a one-process run without accumulation draws
exactly what it drew before (``tests/test_golden.py``). So W processes × A micro-batches read and
draw exactly what one process with ``grad_accum = W·A`` does (the same weights up to the order of
float sums: ``tests/test_distributed.py``), but not what one process with a W·A-times batch draws:
a step's draws are per shard, not per example.

An upsampler (``conditions.low_res``) also gets each clip's low-resolution latent: the clip area-downsampled
by ``conditions.low_res_factor`` and encoded by the same autoencoder (cached beside the latent with
``data.latent_cache``); with ``conditions.noise_level`` it is noised to a level drawn per example from
[0, ``conditions.noise_level_max``] (noise-conditioning augmentation), and the model is told the level.
``train.crop`` trains on random crop×crop windows of the latents (patch training, for a family whose weights
serve any frame size), the low-resolution latent cropped at the matching window. Their draws come after
every earlier feature's draws of the step (only the image-token dropout, newer, comes after them), so runs
without them keep their batches bit for bit.

Image tokens (``conditions.image``, VideoCrafter's ``model.image_encoder: tokens``): the run's frozen image encoder
(``image.encoder``, a local CLIP vision model: conditioning/image.py) encodes each clip's frame 0 (its pixels in
[-1, 1]; with ``data.latent_cache`` the tokens cached beside the latent) into ``cond.image_tokens``, without
gradients, and ``conditions.image_dropout`` replaces an example's tokens by zeros (the null image), drawn after the
upsampler's draws: the last draw of the step, so every run without image tokens keeps its batches. A joint batch's
single images hear no image (the model zeroes their tokens). ``Trainer`` is the run loop with
this task; the names tests and scripts import from here (``TrainingDiverged``, ``batch_indices``,
``collate``, ``lr_at``, ...) stay importable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

import torch

from moviola.autoencoders import build_autoencoder
from moviola.conditioning import Conditioning
from moviola.conditioning.context import context_mask
from moviola.conditioning.image import build_image
from moviola.conditioning.text import build_text
from moviola.config import ConfigError, autoencoder_spatial_factor, config_from_json, to_dict
from moviola.data import check_data
from moviola.data.joint import caption_groups, extra_image_frames
from moviola.data.strides import clip_fps, strides_of
from moviola.data.transforms import area_downsample
from moviola.diffusion import build_schedule, training_losses  # training_losses: looked up here at each step
from moviola.io.checkpoint import CheckpointError, load_weights, resolve_checkpoint, weights_name
from moviola.models.registry import FAMILIES, build_model
from moviola.training.data import BatchPlan, batch_indices, collate  # noqa: F401 (importable from here)
from moviola.training import distributed
from moviola.training.ema import EMA
from moviola.training.loop import CheckpointWriteFailed, RunLoop, TrainingDiverged  # noqa: F401
from moviola.training.task import Task, lr_at
from moviola.utils import autocast


def init_from_checkpoint(model: torch.nn.Module, path: str) -> list[str]:
    """Warm start from a moviola checkpoint (e.g. a shipped ``checkpoints/*`` export): every weight
    whose name and shape match is copied; optimizer state and step count start fresh.

    The input embedding (the family's ``input_embedding``: ``x_embedder.proj.weight``, a U-Net's
    ``unet.conv_in.weight``) is copied group by group of input channels
    (the model's ``input_groups``: x_t, context frames, the self-conditioning estimate, ...): a group
    both models have keeps its weights, a group only the new model has starts at zero (no influence,
    as SD's inpainting models start), a group only the old one had is dropped. So a model without
    context frames started from one with them begins as that model did when given no frame.
    """
    ckpt = resolve_checkpoint(path)
    name = weights_name(ckpt, "ema")
    sd = load_weights(ckpt, name)
    own = model.state_dict()
    loaded = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not loaded:
        raise CheckpointError(f"--init-from {ckpt}: no weight fits this model (different architecture?)")
    with torch.no_grad():
        for k, v in loaded.items():
            own[k].copy_(v.to(own[k].dtype))
    lines = [f"init-from {ckpt}/{name}.safetensors: loaded {len(loaded)} of {len(own)} tensors"]
    key = getattr(type(model), "input_embedding", "x_embedder.proj.weight")  # the family's input layer
    if key in own and key in sd and key not in loaded:
        lines.append(_copy_input_groups(model, own[key], sd[key], config_from_json(ckpt / "config.json")))
        loaded[key] = sd[key]
    left = sorted(set(own) - set(loaded))
    unused = sorted(set(sd) - set(loaded))
    return [*lines, f"init-from: left at initialization: {left[:10]}{'…' if len(left) > 10 else ''}" if left else
            "init-from: every tensor loaded",
            *([f"init-from: not used from the file: {unused[:10]}"] if unused else [])]


def _copy_input_groups(model: torch.nn.Module, new: torch.Tensor, old: torch.Tensor, old_cfg) -> str:
    """Copy the input embedding's weights (out, in, ...) group by group of input channels; returns a log line."""
    channels = model.in_channels
    new_groups = type(model).input_groups(model.config, model.conditions, channels)
    old_groups = FAMILIES[old_cfg.model.family][1].input_groups(old_cfg.model, old_cfg.conditions, channels)
    if sum(n for _, n in old_groups) != old.shape[1] or new.shape[0] != old.shape[0] or new.shape[2:] != old.shape[2:]:
        raise CheckpointError(f"--init-from: the input embedding {tuple(old.shape)} does not fit this model's "
                              f"{tuple(new.shape)} (another latent space or width?)")
    starts, offset = {}, 0
    for group, n in old_groups:
        starts[group] = (offset, n)
        offset += n
    kept, zeroed, offset = [], [], 0
    for group, n in new_groups:
        if group in starts and starts[group][1] == n:
            new[:, offset:offset + n].copy_(old[:, starts[group][0]:starts[group][0] + n].to(new.dtype))
            kept.append(group)
        else:
            new[:, offset:offset + n].zero_()
            zeroed.append(group)
        offset += n
    dropped = [g for g, _ in old_groups if g not in kept]
    return (f"init-from: input channels by group: kept {kept}" + (f", new at zero {zeroed}" if zeroed else "")
            + (f", dropped {dropped}" if dropped else ""))


# the conditions DiffusionTask draws for a training batch (ConditionsConfig.wanted() names)
BUILT_CONDITIONS = ("labels", "text", "context_frames", "self_cond", "fps", "low_res", "noise_level", "image")


def draw_seed(seed: int, step: int, shard: int = 0) -> int:
    """The seed of the generator of shard ``shard`` of step ``step`` (module docstring): shard 0 keeps the
    one-process seed ``seed · 1000003 + step``; another shard's is a hash of ``(seed, step, shard)``."""
    if shard == 0:
        return seed * 1_000_003 + step
    digest = hashlib.blake2b(f"moviola-draws/{seed}/{step}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def split_batch(batch: dict, parts: int) -> list[dict]:
    """A collated batch cut into ``parts`` equal micro-batches along the batch dimension (in order)."""
    n = len(batch["caption"])
    size = n // parts
    return [{k: v[i * size:(i + 1) * size] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}
            for i in range(parts)]


class Draws(NamedTuple):
    """A step's per-example random choices beyond the conditions themselves."""

    labels_kept: torch.Tensor  # (B,) bool: the label was not dropped for guidance
    self_cond: Optional[torch.Tensor]  # (B,) bool: trained on its own x0 estimate (conditions.self_cond), or None
    image_kept: Optional[torch.Tensor] = None  # (B,) bool: the image tokens were not dropped (conditions.image)


class DiffusionTask(Task):
    """The autoencoder (frozen), denoiser, diffusion schedule, EMA and AdamW of a diffusion run."""

    data_parallel = True

    def check(self) -> None:
        cfg = self.cfg
        missing = [name for name in cfg.conditions.wanted() if name not in BUILT_CONDITIONS]
        if missing:
            raise ConfigError(f"training cannot build the condition(s) {missing} from its data yet (conditions.*): "
                              f"it builds {', '.join(BUILT_CONDITIONS)}; the model takes them through "
                              "moviola.Conditioning in your own loop")
        check_data(cfg.data)  # e.g. a frame stride whose clip does not fit: refused before the text encoder loads
        strides = strides_of(cfg.data)
        if cfg.conditions.fps and len(set(strides)) == 1:
            warnings.warn(f"conditions.fps with one frame stride ({strides[0]}): every clip is at {clip_fps(cfg.data, strides[0]):g} "
                          "fps, so the model cannot learn speed from one rate; set data.frame_strides (e.g. [1, 2, 3]) "
                          "to train it at several", UserWarning, stacklevel=2)
        if cfg.autoencoder.kind != "identity" and cfg.autoencoder.path is None:
            raise ConfigError(f"autoencoder.kind={cfg.autoencoder.kind} without autoencoder.path is a new, untrained "
                              "autoencoder: train one first (moviola train-vae) and set autoencoder.path to its export")
        self._check_crop()
        self.text = build_text(cfg, self.device)  # None for a model without text
        # the frozen image encoder of a run with image tokens (None without): its key and width checked before it loads
        self.image_encoder = build_image(cfg, self.device)

    def _check_crop(self) -> None:
        """train.crop trains the whole frame only where the same weights serve any frame size (the model class's
        ``any_size``: a convolutional U-Net), and the crop must be a frame the model can take."""
        cfg, crop = self.cfg, self.cfg.train.crop
        if not crop:
            return
        if not getattr(FAMILIES[cfg.model.family][1], "any_size", False):
            raise ConfigError(f"train.crop={crop}: the {cfg.model.family} family has position embeddings learned for "
                              "one latent size, so crops would not train it for the whole frame: set train.crop=0 "
                              "(patch training needs a convolutional U-Net family)")
        size = crop * autoencoder_spatial_factor(cfg.autoencoder)
        try:  # the family's own rules on a frame of the crop's size (e.g. a U-Net's downsampling divides it)
            cfg.model.validate(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, size=size)))
        except ConfigError as e:
            raise ConfigError(f"train.crop={crop}: the model cannot take a {crop}×{crop} latent, a {size}-pixel frame "
                              f"(data.size below): {e}") from None

    def build(self, dataset, plan: BatchPlan, init_from: Optional[str]) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.dataset, self.plan = dataset, plan
        self.autoencoder = build_autoencoder(cfg.autoencoder).to(self.device)
        self.image_groups = self._image_groups()  # before the cache is filled: its refusal costs no encoding
        if cfg.data.latent_cache:
            with distributed.rank_zero_first():  # rank 0 fills the cache, the others find it filled
                self._cache_latents()
        self.schedule = build_schedule(cfg.diffusion)
        model = build_model(cfg.model, cfg.conditions, self.autoencoder.latent_channels).to(self.device)
        if init_from and Path(init_from).is_dir():  # a moviola checkpoint: warm start from its weights
            for line in init_from_checkpoint(model, init_from):
                self.log(line)
        elif init_from:  # an image DiT fills the frame-wise parts (interop/dit_init.py)
            from moviola.interop import init_from_dit

            for line in init_from_dit(model, init_from):
                self.log(line)
        self.ema = EMA(model, t.ema_decay)
        trained = model.parameter_groups(t.stage)  # train.stage: the rest of the model stays frozen
        if t.stage != "all":
            ids = {id(p) for p in trained}
            for p in model.parameters():
                p.requires_grad_(id(p) in ids)
        self.optimizer = torch.optim.AdamW(trained, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.model = self.wrap(model)

    def _cache_latents(self) -> None:
        """Train on latents encoded once (data.latent_cache) instead of encoding every step."""
        cfg = self.cfg
        if cfg.data.num_workers and self.device.type == "cuda":
            raise ConfigError("data.latent_cache encodes in the data loader, and CUDA cannot run in forked "
                              "DataLoader workers: set data.num_workers=0 (the cached latents are cheap to read)")
        from moviola.data.latent_cache import LatentCache

        self.dataset = LatentCache(self.dataset, self.autoencoder, to_dict(cfg)["data"], device=self.device,
                                   low_res_factor=cfg.conditions.low_res_factor if cfg.conditions.low_res else 0,
                                   image_encoder=self.image_encoder)
        filled = self.dataset.fill(cfg.train.batch_size, progress=not self.quiet)  # batched: fast
        if filled:
            self.log(f"latent cache: encoded {filled} clips into {self.dataset.dir}")

    def _image_groups(self) -> Optional[dict[str, list[int]]]:
        """With text and joint images: the clips of each caption, where a video's images come from (data/joint.py)."""
        d = self.cfg.data
        if not (d.use_image_num and self.text is not None and d.image_captions == "same"):
            return None
        groups = caption_groups(self.dataset)
        alone = [c for c, members in groups.items() if len(members) < 2]
        if alone:
            raise ConfigError(f"data.use_image_num > 0 with text: a video's images come from other clips with its "
                              f"caption (captions are per video), and {len(alone)} caption(s) have one clip only, "
                              f"e.g. {alone[0]!r}; give each caption two clips or more, set data.image_captions=any "
                              "(images from any clip, their captions then wrong) or data.use_image_num=0")
        return groups

    # ---------------------------------------------------------------- one step
    def shard(self, micro: int = 0) -> int:
        """This process's shard of a step's global batch for micro-batch ``micro`` (module docstring)."""
        return self.world.rank * self.cfg.train.grad_accum + micro

    def make_batch(self, step: int, batch: Optional[dict] = None, micro: int = 0
                   ) -> tuple[torch.Tensor, Conditioning, torch.Tensor, torch.Tensor, "Draws"]:
        """Step ``step``'s inputs of micro-batch ``micro``: latents, conditions, timesteps, noise and the
        per-example draws. ``batch`` is the micro-batch's collated items (read here when None)."""
        if batch is None:
            batch = self.read_batch(step)
            if self.cfg.train.grad_accum > 1:
                batch = split_batch(batch, self.cfg.train.grad_accum)[micro]
        g = torch.Generator().manual_seed(draw_seed(self.cfg.train.seed, step, self.shard(micro)))
        x0, labels, frames, low = self._latents(step, batch, micro)
        B = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
        cond, keep = self._conditions(g, x0, labels, batch["caption"], frames, batch.get("stride"))
        rate = self.cfg.conditions.self_cond  # drawn last, so runs without self-conditioning keep their batches
        use = (torch.rand(B, generator=g) < rate).to(self.device) if rate > 0 else None
        # the upsampler's draws (noise levels, then crop windows) come after all of the above, so runs
        # without a low-resolution input or a crop keep their batches
        if low is not None:
            cond.low_res, cond.noise_level = self._augment_low_res(g, low)
        if self.cfg.train.crop:
            x0, noise, cond = self._crop(g, x0, noise, cond)
        # the image tokens' dropout is the last draw of all, so every run without image tokens keeps its batches
        image_kept = None
        if self.cfg.conditions.image:
            cond.image_tokens, image_kept = self._image_tokens(g, batch, B)
        return (x0, cond.to(self.device), t.to(self.device), noise.to(self.device, x0.dtype),
                Draws(keep, use, image_kept))

    def _image_tokens(self, g: torch.Generator, batch: dict, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen image encoder's tokens of each clip's frame 0 (B, N, D) float32 (cached ones with
        data.latent_cache), all zeros (the null image) where conditions.image_dropout drops them (drawn from ``g``),
        and which were kept (B,) bool."""
        keep = torch.rand(batch_size, generator=g) >= self.cfg.conditions.image_dropout
        if "image_tokens" in batch:  # encoded once, cached beside the latent
            tokens = batch["image_tokens"].to(self.device, torch.float32)
        else:
            with torch.no_grad():  # frozen (CLIPImageEncoder.forward is no_grad too)
                tokens = self.image_encoder(batch["video"][:, :, 0].to(self.device)).float()
        tokens = torch.where(keep.to(tokens.device)[:, None, None], tokens, torch.zeros((), device=tokens.device))
        return tokens, keep

    def _latents(self, step: int, batch: dict, micro: int = 0
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor], int, Optional[torch.Tensor]]:
        """The batch's latents (B, c, T(+n), h, w), its labels ((B,) or (B, T+n)), its video's latent frames T and,
        for an upsampler, the clean low-resolution latents (B, c, T(+n), h/f, w/f) (else None)."""
        cfg = self.cfg
        factor = cfg.conditions.low_res_factor if cfg.conditions.low_res else 0
        low = None
        if "latent" in batch:  # encoded once, cached (data.latent_cache)
            x0 = batch["latent"].to(self.device)
            if factor:
                low = batch["low_latent"].to(self.device)
        else:
            with torch.no_grad():
                video = batch["video"].to(self.device)
                x0 = self.autoencoder.encode(video)
                if factor:  # the same clip, area-downsampled, through the same autoencoder
                    low = self.autoencoder.encode(area_downsample(video, factor))
        frames = x0.shape[2]  # latent frames of the videos (joint training appends image frames below)
        labels = batch.get("label")
        if cfg.data.use_image_num:  # Latte+IMG, W.A.L.T: single frames of other clips after each video (data/joint.py)
            idx = self.plan.indices(step, len(self.dataset))
            size = len(idx) // cfg.train.grad_accum
            idx = idx[micro * size:(micro + 1) * size]  # this micro-batch's items
            shard = self.shard(micro)  # shard 0 draws its images as one process always did
            seed = cfg.train.seed if shard == 0 else draw_seed(cfg.train.seed, step, shard) % 2**31
            cached = "latent" in batch  # then the images are cached latent frames that encode an image alone
            drawn = extra_image_frames(self.dataset, idx, cfg.data.use_image_num, seed, step,
                                       groups=self.image_groups,
                                       first_only=cached and not self.autoencoder.encodes_frames_alone,
                                       also=("low_latent",) if cached and factor else ())
            images, image_labels = drawn[0].to(self.device), drawn[1]
            x0 = torch.cat([x0, images.to(x0.dtype) if cached else self._encode_images(images)], dim=2)  # (B, c, T+n, h, w)
            if factor:  # each image's own low-resolution latent
                small = drawn[2]["low_latent"].to(self.device) if cached else self._encode_images(
                    area_downsample(images, factor))
                low = torch.cat([low, small.to(low.dtype)], dim=2)
            if labels is not None and image_labels is not None:  # a label per frame: (B, T+n)
                labels = torch.cat([labels[:, None].expand(-1, frames), image_labels], dim=1)
        return x0, labels, frames, low

    def _augment_low_res(self, g: torch.Generator, low: torch.Tensor
                         ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The low-resolution latent the model is given, and its noise level (B,) float32 (None without
        conditions.noise_level: then the clean latent). Levels s are uniform in [0, conditions.noise_level_max],
        then the noise ε is drawn, both from ``g``: ``sqrt(ᾱ_s) z + sqrt(1 − ᾱ_s) ε`` (level 0: z exactly)."""
        c = self.cfg.conditions
        if not c.noise_level:
            return low, None
        level = torch.randint(0, c.noise_level_max + 1, (low.shape[0],), generator=g)
        eps = torch.randn(low.shape, generator=g, dtype=torch.float32)
        return self.schedule.augment(low, level, eps.to(low.device, low.dtype)), level.float()

    def _crop(self, g: torch.Generator, x0: torch.Tensor, noise: torch.Tensor, cond: Conditioning
              ) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
        """Patch training (train.crop): one random crop×crop window per example (drawn from ``g``), the same for
        all its frames, of the latents, the noise and the conditions laid out like them (given frames, a per-pixel
        mask); the low-resolution latent at the matching window, crop / f at offsets / f (the offsets are
        multiples of the factor f, so the two windows cover the same pixels)."""
        crop, B, H, W = self.cfg.train.crop, x0.shape[0], x0.shape[-2], x0.shape[-1]
        f = self.cfg.conditions.low_res_factor if cond.low_res is not None else 1
        top = torch.randint(0, (H - crop) // f + 1, (B,), generator=g) * f
        left = torch.randint(0, (W - crop) // f + 1, (B,), generator=g) * f

        def window(v: Optional[torch.Tensor], scale: int = 1) -> Optional[torch.Tensor]:
            if v is None or v.shape[-2:] != (H // scale, W // scale):
                return v  # absent, or the same for every pixel (a (B, 1, T, 1, 1) mask)
            size = crop // scale
            return torch.stack([v[i, ..., int(top[i]) // scale:int(top[i]) // scale + size,
                                  int(left[i]) // scale:int(left[i]) // scale + size] for i in range(B)])

        cond = dataclasses.replace(cond, context=window(cond.context), context_mask=window(cond.context_mask),
                                   low_res=window(cond.low_res, f))
        return window(x0), window(noise), cond

    @torch.no_grad()
    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Joint training's images (B, 3, n, H, W), each encoded alone as a one-frame video -> (B, c, n, h, w).

        A causal VAE encodes a clip's first frame by itself, so an image is one latent frame (W.A.L.T);
        a frame VAE or the identity encodes frame by frame anyway, so this is their usual encoding."""
        B, C, n, H, W = images.shape
        one = images.transpose(1, 2).reshape(B * n, C, 1, H, W)  # (B·n, 3, 1, H, W): b-major, as (B, n)
        z = self.autoencoder.encode(one)  # (B·n, c, 1, h, w)
        if z.shape[2] != 1:
            raise ValueError(f"the autoencoder encoded a one-frame video into {z.shape[2]} latent frames: "
                             "joint image training appends one latent frame per image")
        return z.reshape(B, n, z.shape[1], *z.shape[3:]).transpose(1, 2)  # (B, c, n, h, w)

    def _conditions(self, g: torch.Generator, x0: torch.Tensor, labels: Optional[torch.Tensor],
                    captions: list[str], frames: int, strides: Optional[torch.Tensor] = None
                    ) -> tuple[Conditioning, torch.Tensor]:
        """The step's conditions after training dropout (drawn from ``g``), and which labels were kept.
        ``strides``: the clips' frame strides (B,) (items of data.frame_strides), else data.frame_stride for all."""
        c = self.cfg.conditions
        B = x0.shape[0]
        keep = torch.rand(B, generator=g) >= c.label_dropout
        cond = Conditioning()
        if c.num_classes:
            cond = Conditioning(labels=labels).drop(keep, ["labels"])
        # (draws for text and context come after the ones above, so class-only runs keep their batches)
        if self.text is not None:  # caption dropout: the empty prompt is the null condition
            keep_text = torch.rand(B, generator=g) >= c.text_dropout
            cond.text, cond.text_mask = self.text([p if k else "" for p, k in zip(captions, keep_text.tolist())])
        if c.context_frames:  # frames given as conditions; dropped for guidance
            mask = context_mask(c.context_mode, B, frames, generator=g)  # (B, 1, T, 1, 1)
            keep_ctx = (torch.rand(B, generator=g) >= c.context_dropout).float()
            mask = mask * keep_ctx[:, None, None, None, None]
            if x0.shape[2] != frames:  # joint training: the trailing image frames are never given
                mask = torch.cat([mask, mask.new_zeros(B, 1, x0.shape[2] - frames, 1, 1)], dim=2)  # (B, 1, T+n, 1, 1)
            mask = mask.to(self.device, x0.dtype)
            cond.context, cond.context_mask = x0 * mask, mask
        if c.fps:  # the clip's frame rate, data.fps / stride; no dropout (not a guidance target) and no draw from g
            cond.fps = self._clip_fps(strides, B)
        return cond, keep

    def _clip_fps(self, strides: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """(B,) float32: data.fps over each clip's frame stride."""
        d = self.cfg.data
        if strides is None:
            if d.frame_strides:
                raise ValueError("data.frame_strides is set, but the batch carries no per-clip stride (a dataset or "
                                 "latent cache that does not keep it): the fps condition needs each clip's stride")
            strides = torch.full((batch,), d.frame_stride)
        return d.fps / torch.as_tensor(strides).to(torch.float32)

    def step(self, step: int, batch: Optional[dict] = None) -> Optional[dict]:
        """One optimizer step: ``train.grad_accum`` micro-batches, their losses' gradients summed (each
        loss divided by grad_accum: the mean over the step's examples), averaged over the ranks by DDP
        in the last micro-batch's backward (the earlier ones skip DDP's sync: ``no_sync``). A step that
        is non-finite on any rank (any micro-batch's loss, or the gradient) is skipped on every rank."""
        cfg, accum = self.cfg, self.cfg.train.grad_accum
        parallel = self.world.world_size > 1
        if batch is None:
            batch = self.read_batch(step)
        micros = split_batch(batch, accum) if accum > 1 else [batch]
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        finite, sums = True, {}
        for micro, part in enumerate(micros):
            x0, cond, t, noise, draws = self.make_batch(step, part, micro)
            model = self.model
            if cfg.data.use_image_num:  # the model's temporal modules skip the trailing image frames
                model = functools.partial(self.model, num_images=cfg.data.use_image_num)
            sync = micro == accum - 1 or not parallel
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with autocast(self.device, self.precision):
                    terms = training_losses(model, self.schedule, x0, t, cond, prediction=cfg.diffusion.prediction,
                                            learned_sigma=self.raw_model.learned_sigma, noise=noise,
                                            loss_weighting=cfg.diffusion.loss_weighting,
                                            min_snr_gamma=cfg.diffusion.min_snr_gamma,
                                            self_cond=draws.self_cond)
                loss = terms["loss"].float().mean()
                finite = finite and bool(torch.isfinite(loss))
                if not finite and not parallel:  # (with DDP every rank runs every backward: DDP's syncs must pair)
                    self.optimizer.zero_grad(set_to_none=True)
                    return None
                (loss if accum == 1 else loss / accum).backward()
            for k, v in (("loss", loss), *((k, terms[k]) for k in ("mse", "vb") if k in terms)):
                sums[k] = sums.get(k, 0.0) + v.float().mean().item()
        grad_norm = self.clip(self.raw_model.parameters())
        finite = finite and bool(torch.isfinite(grad_norm))
        if parallel:  # non-finite on any rank: skipped on every rank
            finite = distributed.all_true(finite, self.device if self.device.type == "cuda" else None)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.ema.update(self.raw_model)
        means = {k: v / accum for k, v in sums.items()} if accum > 1 else sums
        if parallel:  # the logged losses are the means over all ranks
            means = distributed.mean(means, self.device if self.device.type == "cuda" else None)
        out = {"loss": means["loss"], "grad_norm": grad_norm.item(), "lr": self.optimizer.param_groups[0]["lr"]}
        out.update({k: means[k] for k in ("mse", "vb") if k in means})
        return out

    @torch.no_grad()
    def judge(self, n: int = 12) -> dict:
        """Sample a few videos with the EMA model and score them by the Moving Shapes rules."""
        if self.cfg.data.dataset != "shapes" or not (self.cfg.conditions.num_classes or self.text is not None):
            return {}
        if self.cfg.conditions.low_res:  # the judge scores videos made from a label or prompt alone
            return {}
        from moviola.data.shapes import NUM_CLASSES, caption, label_to_attributes
        from moviola.eval.shapes_score import score_batch
        from moviola.pipelines.base import Pipeline

        pipe = Pipeline(self.ema.model, self.autoencoder, self.schedule, self.cfg, device=self.device,
                        text=self.text, image_encoder=self.image_encoder)
        labels = [int(i * NUM_CLASSES / n) for i in range(n)]
        if self.text is not None:
            video = pipe(prompt=[caption(*label_to_attributes(y)) for y in labels], steps=self.cfg.train.sample_steps, seed=0)
        else:
            video = pipe(labels=labels, steps=self.cfg.train.sample_steps, seed=0)
        s = score_batch(video, labels)
        return {f"judge_{k}": v for k, v in s.items() if isinstance(v, (int, float))}


class Trainer(RunLoop):
    """Diffusion training: the run loop (``loop.py``) with :class:`DiffusionTask`."""

    task_class = DiffusionTask
