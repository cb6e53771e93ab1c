"""The ``model:`` section: one frozen dataclass per family, chosen by ``model.family``.

Each family's config holds its own switches and named sizes, validates them against the run
(``validate(run)``), says which conditions the family can take (``takes``), and migrates the
keys of configs saved before a rename (``migrate``). A key of another family is an error that
names both: "'window_size' is not a latte key (it is a walt key)".

To add a family: a dataclass here with ``family: Literal["<name>"]``, registered in
``MODEL_CONFIGS``; its model class in ``models/<name>/`` registered in ``models/registry.py``
(docs/architecture.md walks through it).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Optional

from moviola.config.autoencoder import autoencoder_spatial_factor, latent_frames
from moviola.config.base import ConfigError, from_dict


@dataclass(frozen=True)
class ModelDims:
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float


def named_dims(cfg, sizes: dict[str, dict]) -> ModelDims:
    """A family config's named size (``cfg.size`` in ``sizes``), overridden by the fields it sets; heads
    must divide the width."""
    if cfg.size not in sizes:
        raise ConfigError(f"model.size {cfg.size!r} is not one of {list(sizes)}")
    base = sizes[cfg.size]
    dims = ModelDims(hidden_size=cfg.hidden_size or base["hidden_size"], depth=cfg.depth or base["depth"],
                     num_heads=cfg.num_heads or base["num_heads"], mlp_ratio=cfg.mlp_ratio or base["mlp_ratio"])
    if dims.hidden_size % dims.num_heads:
        raise ConfigError(f"model.hidden_size={dims.hidden_size} is not divisible by model.num_heads={dims.num_heads}")
    return dims


# Latte's sizes (paper Table / official registry). ``depth`` counts all blocks, spatial and
# temporal together, as the official code does: XL has 14 spatial + 14 temporal blocks.
LATTE_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0),
}
LATTE_PATCH_SIZES = (1, 2, 4, 8)
# Latte's four ways for space and time to meet (paper §3.2); configs before the rename said variant: 1..4
LATTE_LAYOUTS = ("interleaved", "late_fusion", "factorized_attention", "factorized_heads")


@dataclass(frozen=True)
class LatteConfig:
    """Latte (Ma et al. 2024): a video DiT with every design switch of the paper; the defaults are the
    released model."""

    family: Literal["latte"] = "latte"
    size: str = "tiny"  # a named size (tiny, S, B, L, XL); the fields below override it
    patch_size: int = 2
    hidden_size: Optional[int] = None
    depth: Optional[int] = None  # total transformer blocks (spatial + temporal), as Latte counts
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    learned_sigma: bool = False
    qk_norm: bool = False
    # interleaved spatial/temporal blocks, all spatial then all temporal, factorized attention in one
    # block, or one attention whose heads split between space and time
    layout: Literal["interleaved", "late_fusion", "factorized_attention", "factorized_heads"] = "interleaved"
    patch_embed: Literal["frame", "tubelet"] = "frame"  # per-frame p×p patches, or s×p×p tubelets
    tubelet_size: int = 1  # s, the tubelet's temporal stride (patch_embed=tubelet)
    injection: Literal["adaln", "adaln_single", "tokens"] = "adaln"  # timestep/class: adaLN-Zero, PixArt, tokens
    temporal_pos: Literal["abs", "rope"] = "abs"  # absolute sin-cos, or RoPE in the temporal attention
    # PixArt / diffusers' Latte-1 position scaling: a grid of n tokens gets positions i·base/n/scale.
    # null and 1.0 give integer positions (DiT, Latte); imported Latte-1 models set them.
    pos_base_size: Optional[int] = None
    pos_interpolation_scale: float = 1.0
    # also add the mask-mean of the text tokens to the timestep embedding (a global, adaLN-path
    # text condition beside the cross-attention, as Imagen and SD3 add a pooled embedding)
    text_pooled: bool = False
    spatial_heads: Optional[int] = None  # layout factorized_heads: heads given to space (null = half)

    takes: ClassVar[frozenset] = frozenset({"labels", "text", "context_frames"})
    joint_images: ClassVar[bool] = True  # image-video joint training (data.use_image_num)
    RANGES: ClassVar[tuple] = (("model.patch_size", 1, None), ("model.hidden_size", 1, None),
                               ("model.depth", 1, None), ("model.num_heads", 1, None),
                               ("model.mlp_ratio", 1e-6, None))

    @staticmethod
    def migrate(section: dict) -> list[tuple[str, str]]:
        """Rename the keys of a model section saved before their rename, in place; returns (old, new) pairs."""
        if "variant" not in section:
            return []
        v = section.pop("variant")
        if type(v) is not int or v not in (1, 2, 3, 4):  # true is not 1, 1.0 is not 1
            raise ConfigError(f"model.variant: {v!r} is not one of [1, 2, 3, 4] (now model.layout: one of "
                              f"{list(LATTE_LAYOUTS)})")
        if section.get("layout", LATTE_LAYOUTS[v - 1]) != LATTE_LAYOUTS[v - 1]:
            raise ConfigError(f"model.variant={v} (the old name of model.layout: {LATTE_LAYOUTS[v - 1]}) and "
                              f"model.layout={section['layout']} are both set: keep model.layout")
        section["layout"] = LATTE_LAYOUTS[v - 1]
        return [("model.variant", "model.layout")]

    def dims(self) -> ModelDims:
        """Width, depth, heads and MLP ratio: the named size, overridden by the fields that are set."""
        if self.patch_size not in LATTE_PATCH_SIZES:
            raise ConfigError(f"model.patch_size must be one of {LATTE_PATCH_SIZES}, got {self.patch_size}")
        dims = named_dims(self, LATTE_SIZES)
        if dims.hidden_size % 4:
            raise ConfigError(f"model.hidden_size={dims.hidden_size} must be a multiple of 4 "
                              "(2-D sin-cos position embedding)")
        if dims.depth % 2 and self.layout != "factorized_heads":
            raise ConfigError(f"model.depth={dims.depth} must be even: Latte pairs each spatial attention with a "
                              "temporal one (layout factorized_heads, whose blocks do both, takes any depth)")
        if dims.depth <= 0:
            raise ConfigError(f"model.depth must be positive (got {dims.depth})")
        return dims

    def validate(self, run) -> None:
        """Latte's rules against the rest of the run (a RunConfig: frame size, latent frames, conditions)."""
        d, c = run.data, run.conditions
        factor = autoencoder_spatial_factor(run.autoencoder)
        if d.size % (self.patch_size * factor) != 0:
            raise ConfigError(
                f"data.size={d.size} is not divisible by model.patch_size × autoencoder factor "
                f"= {self.patch_size}×{factor}; pick a size that is a multiple of {self.patch_size * factor}")
        dims = self.dims()  # raises on an unknown size or heads not dividing width
        if self.patch_embed == "frame" and self.tubelet_size != 1:
            raise ConfigError(f"model.tubelet_size={self.tubelet_size} needs model.patch_embed=tubelet "
                              "(per-frame patches have tubelet_size 1)")
        if self.tubelet_size < 1:
            raise ConfigError(f"model.tubelet_size must be at least 1 (got {self.tubelet_size})")
        frames = latent_frames(run.autoencoder, d.frames)
        if frames % self.tubelet_size:
            raise ConfigError(f"{frames} {'latent ' if frames != d.frames else ''}frames (data.frames={d.frames}) are "
                              f"not divisible by model.tubelet_size={self.tubelet_size}")
        if self.temporal_pos == "rope" and (dims.hidden_size // dims.num_heads) % 2:
            raise ConfigError(f"model.temporal_pos=rope needs an even head width; hidden_size/num_heads = "
                              f"{dims.hidden_size}/{dims.num_heads} is odd")
        if self.pos_base_size is not None and self.pos_base_size <= 0:
            raise ConfigError(f"model.pos_base_size must be positive or null (got {self.pos_base_size})")
        if self.pos_interpolation_scale <= 0:
            raise ConfigError(f"model.pos_interpolation_scale must be positive (got {self.pos_interpolation_scale})")
        if self.text_pooled and not c.text_channels:
            raise ConfigError("model.text_pooled needs a text model: set conditions.text_channels (the encoder's width)")
        if self.spatial_heads is not None and (self.layout != "factorized_heads"
                                               or not 0 <= self.spatial_heads <= dims.num_heads):
            raise ConfigError(f"model.spatial_heads={self.spatial_heads} needs layout factorized_heads and a value "
                              f"in 0..{dims.num_heads} (model.num_heads)")
        if d.use_image_num and self.patch_embed != "frame":
            raise ConfigError("data.use_image_num > 0 (image-video joint training) needs model.patch_embed=frame: "
                              "a single image cannot fill a tubelet")


# W.A.L.T's sizes. L and XL are the paper's (Table 8: 24×1024 and 28×1152, 16 heads); the paper names no
# S or B, so they take DiT's S and B dims (12×384, 6 heads; 12×768, 12 heads). ``depth`` counts layers
# (one window attention + MLP each), alternating spatial-window and spatiotemporal-window: L's 24 layers
# are 12 SW + 12 STW, the count that gives the paper's 313 M / 458 M parameters (docs/walt.md).
WALT_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0),
}
Window = tuple[int, int, int]  # (t, h, w) in tokens


@dataclass(frozen=True)
class WaltConfig:
    """W.A.L.T (Gupta et al. 2023, "Photorealistic Video Generation with Diffusion Models"): a latent video
    transformer of alternating spatial-window and spatiotemporal-window attention layers; every choice of
    the paper is a switch, the defaults are the paper's (docs/walt.md)."""

    family: Literal["walt"] = "walt"
    size: str = "tiny"  # a named size (tiny, S, B, L, XL); the fields below override it
    patch_size: int = 1  # p: each latent frame is cut into p×p patches (the paper's default 1)
    hidden_size: Optional[int] = None
    depth: Optional[int] = None  # layers, SW and STW alternating (even: L = 24 = 12 SW + 12 STW)
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    learned_sigma: bool = False  # the paper predicts v with a fixed variance
    qk_norm: bool = True  # query-key normalization (the paper's default)
    # the latent grid t×h×w the learnable absolute position embeddings are made for (the training
    # grid); at another grid they and the relative-bias tables are interpolated (docs/walt.md)
    pos_grid: Optional[tuple[int, int, int]] = None
    # windows in tokens (latent / patch) at pos_grid. SW: 1×h'×w' (null = the whole frame);
    # STW: t×h'×w' (null = all latent frames × h/2 × w/2, the paper's 5×8×8 on 5×16×16)
    spatial_window: Optional[tuple[int, int]] = None
    spatiotemporal_window: Optional[tuple[int, int, int]] = None
    relative_bias: bool = True  # a Swin-style learned relative position bias in every window attention
    adaln: Literal["lora", "separate"] = "lora"  # AdaLN-LoRA (Eq. 3), or DiT's own adaLN per layer
    adaln_lora_rank: int = 2  # r
    # text: k = v = concat[tokens of the window, text] (the paper's), or plain cross-attention to the text
    text_attention: Literal["concat_kv", "cross"] = "concat_kv"
    text_in_stw: bool = False  # also attend to the text in the STW layers (the paper's video-only setting)
    text_pooled: bool = False  # also add the mask-mean of the text tokens to the conditioning vector

    takes: ClassVar[frozenset] = frozenset({"labels", "text", "context_frames", "low_res", "noise_level",
                                                 "self_cond"})
    joint_images: ClassVar[bool] = True  # image frames (num_images) get SW attention and an identity STW
    RANGES: ClassVar[tuple] = (("model.patch_size", 1, 64), ("model.hidden_size", 1, None),
                               ("model.depth", 1, None), ("model.num_heads", 1, None),
                               ("model.mlp_ratio", 1e-6, None), ("model.adaln_lora_rank", 1, None),
                               *((f"model.pos_grid[{i}]", 1, 4096) for i in range(3)),
                               *((f"model.spatial_window[{i}]", 1, None) for i in range(2)),
                               *((f"model.spatiotemporal_window[{i}]", 1, None) for i in range(3)))

    @staticmethod
    def migrate(section: dict) -> list[tuple[str, str]]:
        return []

    def dims(self) -> ModelDims:
        """Width, depth, heads and MLP ratio: the named size, overridden by the fields that are set."""
        dims = named_dims(self, WALT_SIZES)
        if dims.depth <= 0 or dims.depth % 2:
            raise ConfigError(f"model.depth={dims.depth} must be even and positive: W.A.L.T's layers alternate "
                              "spatial-window and spatiotemporal-window attention")
        return dims

    def token_grid(self) -> Window:
        """pos_grid in tokens: (t, h/p, w/p)."""
        if self.pos_grid is None:
            raise ConfigError("model.pos_grid is not set: give the training latent grid [t, h, w]")
        t, h, w = self.pos_grid
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(f"model.patch_size={p} does not divide model.pos_grid={list(self.pos_grid)} "
                              f"(latent {h}×{w})")
        return t, h // p, w // p

    def train_windows(self) -> tuple[Window, Window]:
        """The SW and STW windows (t, h, w) in tokens at pos_grid: the sizes of the relative-bias tables."""
        grid = t, h, w = self.token_grid()
        sw = (1, *self.spatial_window) if self.spatial_window else (1, h, w)
        if self.spatiotemporal_window:
            stw = tuple(self.spatiotemporal_window)
        elif h % 2 or w % 2:
            raise ConfigError(f"the default model.spatiotemporal_window (all frames × h/2 × w/2) needs an even token "
                              f"grid, got {h}×{w} (model.pos_grid={list(self.pos_grid)} / model.patch_size="
                              f"{self.patch_size}): set model.spatiotemporal_window")
        else:
            stw = (t, h // 2, w // 2)
        for key, win in (("model.spatial_window", sw), ("model.spatiotemporal_window", stw)):
            if any(n % k for k, n in zip(win, grid)):
                raise ConfigError(f"{key}={list(win[1:] if key == 'model.spatial_window' else win)} does not divide "
                                  f"the token grid {t}×{h}×{w} (model.pos_grid={list(self.pos_grid)} / "
                                  f"model.patch_size={self.patch_size})")
        return sw, stw

    def windows(self, grid: Window) -> tuple[Window, Window]:
        """The SW and STW windows at a token grid (t video frames, h, w) other than pos_grid's (another
        length, size or aspect ratio): a window spanning a whole axis spans the new one; a smaller one
        keeps its length in time and scales with the grid in space (the paper's 9:16 fine-tune)."""
        train = self.token_grid()
        sw, stw = self.train_windows()
        return (self._fit("model.spatial_window", sw, train, grid, whole_time=False),
                self._fit("model.spatiotemporal_window", stw, train, grid, whole_time=True))

    def _fit(self, key: str, window: Window, train: Window, grid: Window, whole_time: bool) -> Window:
        fitted = []
        for axis, (k, n0, n) in enumerate(zip(window, train, grid)):
            if axis == 0 and not whole_time:
                k = 1  # a spatial window is one frame at any length
            elif k == n0:
                k = n  # a window spanning an axis spans it at any size
            elif axis > 0:  # a smaller spatial window scales with the frame (STW 5×8×8 at 16×28: 5×8×14)
                if k * n % n0:
                    raise ConfigError(f"{key}: a window of {k} of {n0} tokens does not scale to a grid of {n} "
                                      f"(model.pos_grid={list(self.pos_grid)}, patch {self.patch_size})")
                k = k * n // n0
            if n % k:
                raise ConfigError(f"{key}: a window of {k} tokens does not divide the token grid "
                                  f"{'×'.join(map(str, grid))} (model.pos_grid={list(self.pos_grid)}, patch "
                                  f"{self.patch_size})")
            fitted.append(k)
        return tuple(fitted)

    def validate(self, run) -> None:
        """W.A.L.T's rules against the rest of the run: grid, patch, windows, conditions."""
        d, c = run.data, run.conditions
        self.dims()
        factor = autoencoder_spatial_factor(run.autoencoder)
        if d.size % (self.patch_size * factor):
            raise ConfigError(f"data.size={d.size} is not divisible by model.patch_size × autoencoder factor = "
                              f"{self.patch_size}×{factor}; pick a size that is a multiple of "
                              f"{self.patch_size * factor}")
        latent = (latent_frames(run.autoencoder, d.frames), d.size // factor, d.size // factor)
        if self.pos_grid is None:
            raise ConfigError(f"model.pos_grid is not set: give the training latent grid, here {list(latent)} "
                              f"(data.frames={d.frames}, data.size={d.size}, autoencoder factor {factor})")
        self.windows((latent[0], latent[1] // self.patch_size, latent[2] // self.patch_size))
        if (self.text_pooled or self.text_in_stw) and not c.text_channels:
            raise ConfigError("model.text_pooled and model.text_in_stw need a text model: set conditions.text_channels")
        if c.noise_level and not c.low_res:
            raise ConfigError("conditions.noise_level (noise-conditioning augmentation) needs conditions.low_res")


# Video LDM's U-Net sizes. tiny is ours (Moving Shapes' 8×8 latents); sd15 and sd21 are Stable Diffusion's
# U-Nets (1.x: 8 heads, conv projections; 2.x: 64-channel heads, linear projections), whose weights
# `moviola convert diffusers-unet` loads. attention_resolutions are downsampling factors, as in LDM's configs.
VIDEO_LDM_SIZES: dict[str, dict] = {
    "tiny": dict(block_out_channels=(64, 128), layers_per_block=1, attention_resolutions=(1, 2), num_heads=4,
                 head_channels=None, norm_num_groups=16, use_linear_projection=True),
    "sd15": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_resolutions=(1, 2, 4),
                 num_heads=8, head_channels=None, norm_num_groups=32, use_linear_projection=False),
    "sd21": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_resolutions=(1, 2, 4),
                 num_heads=None, head_channels=64, norm_num_groups=32, use_linear_projection=True),
}
VIDEO_LDM_TEMPORAL = ("conv_attention", "attention", "conv", "none")


@dataclass(frozen=True)
class UNetDims:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_resolutions: tuple[int, ...]
    num_heads: Optional[int]
    head_channels: Optional[int]
    norm_num_groups: int
    use_linear_projection: bool

    def heads(self) -> tuple[int, ...]:
        """Attention heads per level."""
        if self.head_channels:
            return tuple(ch // self.head_channels for ch in self.block_out_channels)
        return (self.num_heads,) * len(self.block_out_channels)


UNET_SHAPE_KEYS = ("block_out_channels", "layers_per_block", "attention_resolutions", "norm_num_groups",
                   "use_linear_projection")


def unet_dims(cfg, sizes: dict[str, dict]) -> UNetDims:
    """A U-Net family config's shape (Video LDM, VideoCrafter): its named size (``cfg.size`` in ``sizes``),
    overridden by the fields it sets (``UNET_SHAPE_KEYS``, ``num_heads`` / ``head_channels``); checked."""
    if cfg.size not in sizes:
        raise ConfigError(f"model.size {cfg.size!r} is not one of {list(sizes)}")
    base = dict(sizes[cfg.size])
    if cfg.num_heads is not None or cfg.head_channels is not None:  # one replaces the other
        base.update(num_heads=cfg.num_heads, head_channels=cfg.head_channels)
    for key in UNET_SHAPE_KEYS:
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    dims = UNetDims(**{k: tuple(v) if isinstance(v, list) else v for k, v in base.items()})
    channels = dims.block_out_channels
    if not channels or any(c <= 0 for c in channels):
        raise ConfigError(f"model.block_out_channels must be positive channel counts, got {list(channels)}")
    if (dims.num_heads is None) == (dims.head_channels is None):
        raise ConfigError("set one of model.num_heads (SD 1.x) and model.head_channels (SD 2.x), not both")
    factors = [2 ** i for i in range(len(channels))]
    bad = [r for r in dims.attention_resolutions if r not in factors]
    if bad:
        raise ConfigError(f"model.attention_resolutions {bad} are not levels of this U-Net: its "
                          f"{len(channels)} levels have downsampling factors {factors}")
    for c, heads in zip(channels, dims.heads()):
        if c % dims.norm_num_groups:
            raise ConfigError(f"model.block_out_channels has {c} channels, not divisible by "
                              f"model.norm_num_groups={dims.norm_num_groups}")
        if not heads or c % heads:
            raise ConfigError(f"{c} channels do not split into {heads} heads (model.num_heads / "
                              "model.head_channels)")
    return dims


def check_unet_size(run, dims: UNetDims) -> None:
    """data.size must survive the autoencoder and every U-Net downsampling."""
    factor = autoencoder_spatial_factor(run.autoencoder) * 2 ** (len(dims.block_out_channels) - 1)
    if run.data.size % factor:
        raise ConfigError(f"data.size={run.data.size} is not divisible by autoencoder factor × U-Net downsampling = "
                          f"{factor}: pick a multiple of {factor} or fewer model.block_out_channels levels")


@dataclass(frozen=True)
class VideoLDMConfig:
    """Video LDM (Blattmann et al. 2023, "Align your Latents"): an image LDM U-Net (Stable Diffusion's layout,
    loadable from diffusers) with α-blended temporal layers after its spatial layers, trained in two stages
    (docs/video_ldm.md). The defaults are the paper's T2V model."""

    family: Literal["video_ldm"] = "video_ldm"
    size: str = "tiny"  # a named U-Net (tiny, sd15, sd21); the fields below override it
    block_out_channels: Optional[tuple[int, ...]] = None  # channels per level
    layers_per_block: Optional[int] = None  # resnets per level (the up path has one more)
    attention_resolutions: Optional[tuple[int, ...]] = None  # downsampling factors with spatial transformers
    num_heads: Optional[int] = None  # heads per spatial attention (SD 1.x)...
    head_channels: Optional[int] = None  # ...or channels per head (SD 2.x); set one of the two
    norm_num_groups: Optional[int] = None
    use_linear_projection: Optional[bool] = None  # the transformers' proj_in/out: linear (SD 2.x) or 1×1 conv
    transformer_layers: int = 1  # transformer blocks per spatial transformer
    learned_sigma: bool = False
    # temporal layers (paper §3.1): a 3-D conv residual block after each resnet and a temporal attention
    # after each spatial transformer (conv_attention), either alone (the paper's attention-only ablation),
    # or none (the image model)
    temporal_layers: Literal["conv_attention", "attention", "conv", "none"] = "conv_attention"
    temporal_mix: Literal["learned", "fixed"] = "learned"  # α = sigmoid(learned scalar) per layer, or fixed
    alpha_init: float = 0.5  # α at initialization (fixed: its value; 1 = the image model)
    temporal_window: Optional[int] = 8  # a frame attends to frames at most this far away (null: all)
    temporal_text: bool = True  # text cross-attention in the temporal attention (the paper's T2V model)
    temporal_head_channels: int = 64
    temporal_kernel: int = 3  # the 3-D convolutions' kernel in time

    takes: ClassVar[frozenset] = frozenset({"labels", "text", "context_frames", "low_res", "noise_level", "fps"})
    joint_images: ClassVar[bool] = True  # image frames bypass every temporal layer (α = 1 for them)
    RANGES: ClassVar[tuple] = (("model.layers_per_block", 1, 16), ("model.num_heads", 1, None),
                               ("model.head_channels", 1, None), ("model.norm_num_groups", 1, None),
                               ("model.transformer_layers", 1, 64), ("model.alpha_init", 0.0, 1.0),
                               ("model.temporal_window", 0, None), ("model.temporal_head_channels", 1, None),
                               ("model.temporal_kernel", 1, 15))

    @staticmethod
    def migrate(section: dict) -> list[tuple[str, str]]:
        return []

    def dims(self) -> UNetDims:
        """The U-Net's shape: the named size, overridden by the fields that are set; checked."""
        return unet_dims(self, VIDEO_LDM_SIZES)

    def validate(self, run) -> None:
        """Video LDM's rules against the rest of the run: latent size, alpha, conditions."""
        c = run.conditions
        check_unet_size(run, self.dims())
        if self.temporal_mix == "learned" and not 0.0 < self.alpha_init < 1.0:
            raise ConfigError(f"model.alpha_init={self.alpha_init}: a learned α = sigmoid(logit) starts inside "
                              "(0, 1); use model.temporal_mix=fixed for α = 0 or 1")
        if c.context_frames and self.temporal_layers == "none":
            raise ConfigError("conditions.context_frames: given frames reach Video LDM's temporal layers, and "
                              "model.temporal_layers=none has none; add temporal layers or turn context frames off")
        if c.noise_level and not c.low_res:
            raise ConfigError("conditions.noise_level (noise augmentation of the low-resolution input) needs "
                              "conditions.low_res")


# VideoCrafter's U-Net sizes. tiny is ours (Moving Shapes' 8×8 latents); vc512 is the released models' U-Net,
# Stable Diffusion 2.1's (320 channels × (1, 2, 4, 4), 2 resnets per level, spatial transformers at
# downsampling factors 1, 2, 4 — the official configs' attention_resolutions [4, 2, 1] count the other way —,
# 64-channel heads, linear projections), which `moviola convert diffusers-unet3d` also loads (ModelScope).
VIDEOCRAFTER_SIZES: dict[str, dict] = {
    "tiny": dict(block_out_channels=(64, 128), layers_per_block=1, attention_resolutions=(1, 2), num_heads=4,
                 head_channels=None, norm_num_groups=16, use_linear_projection=True),
    "vc512": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_resolutions=(1, 2, 4),
                  num_heads=None, head_channels=64, norm_num_groups=32, use_linear_projection=True),
}


@dataclass(frozen=True)
class VideoCrafterConfig:
    """VideoCrafter 1 / 2 (Chen et al. 2023, 2024), and ModelScope T2V, whose diffusers U-Net it loads: Stable
    Diffusion's U-Net with plain-residual temporal layers — a 4-layer temporal convolution after each resnet
    (VC2, ModelScope), a temporal transformer after each spatial transformer and one after conv_in — whose
    last layers start at zero. The defaults are VideoCrafter2's (models/videocrafter/)."""

    family: Literal["videocrafter"] = "videocrafter"
    size: str = "tiny"  # a named U-Net (tiny, vc512); the fields below override it
    block_out_channels: Optional[tuple[int, ...]] = None  # channels per level
    layers_per_block: Optional[int] = None  # resnets per level (the up path has one more)
    attention_resolutions: Optional[tuple[int, ...]] = None  # downsampling factors with spatial transformers
    num_heads: Optional[int] = None  # heads per spatial attention...
    head_channels: Optional[int] = None  # ...or channels per head (VideoCrafter, ModelScope: 64); one of the two
    norm_num_groups: Optional[int] = None
    use_linear_projection: Optional[bool] = None  # the spatial transformers' proj_in/out: linear or 1×1 conv
    transformer_layers: int = 1  # transformer blocks per spatial and per temporal transformer
    learned_sigma: bool = False
    # temporal layers. Each temporal transformer after a spatial one has that level's heads (and head width).
    temporal_conv: bool = True  # ModelScope's 4-layer temporal convolution after each resnet (VC2; VC1: false)
    relative_position: bool = False  # learned Shaw relative positions in the temporal attention (VC1: true)
    temporal_length: int = 16  # relative positions are clipped at ± this many frames
    causal_attention: bool = False  # a frame attends to itself and earlier frames only
    # the temporal transformer's second attention: self-attention again (VideoCrafter's only_self_att, diffusers'
    # double_self_attention), or cross-attention to the text (false; needs conditions.text_channels)
    temporal_self_attention_only: bool = True
    # a temporal transformer after conv_in (VideoCrafter's init_attn, diffusers' transformer_in) with its own
    # heads: input_attention_heads of input_attention_head_channels (null: the first level's spatial head width)
    addition_attention: bool = True
    input_attention_heads: int = 8
    input_attention_head_channels: Optional[int] = None
    # image-to-video (VideoCrafter1; DynamiCrafter): image tokens -> a Perceiver resampler (resampler_queries
    # tokens of the text's width) -> a second cross-attention in every spatial transformer, beside the text's, with
    # the text's query and its own to_k_ip/to_v_ip, added × image_scale. Where the tokens come from:
    #   none:   no image branch (text-to-video; given frames, if any, only along channels)
    #   latent: a small trainable patch encoder inside the model reads the given first frame, context frame 0
    #           (m ∘ z, m) of conditions.context_frames (context_mode: first gives it): no CLIP needed
    #   tokens: a frozen image encoder's tokens (CLIP ViT-H/14's 257×1280) arrive as Conditioning.image_tokens
    #           (conditions.image)
    # An example with no frame 0 given (its context_mask is zero there), or with all-zero / no image tokens (the
    # null image of guidance and of conditions.*_dropout), gets no image contribution at all.
    image_encoder: Literal["none", "latent", "tokens"] = "none"
    # the width of the tokens the resampler reads: tokens: the frozen encoder's (required; OpenCLIP-H: 1280);
    # latent: the patch encoder's (null: 64)
    image_token_dim: Optional[int] = None
    image_patch: int = 1  # latent: the patch encoder's patch, in latent pixels (8×8 latents, patch 1: 64 tokens)
    image_encoder_depth: int = 2  # latent: its pre-norm transformer layers
    image_encoder_heads: int = 4  # latent: its attention heads
    resampler_queries: int = 16  # the image tokens the U-Net attends to, per clip (VC1: 16)
    resampler_depth: int = 4
    resampler_dim: Optional[int] = None  # the resampler's width (null: conditions.text_channels, as VC1's 1024)
    resampler_heads: int = 12
    resampler_head_channels: int = 64
    image_scale: float = 1.0  # the image attention's factor (VC1's image_cross_attention_scale)
    image_scale_learnable: bool = False  # DynamiCrafter's per-layer gate: image_scale · (tanh(alpha) + 1), alpha = 0
    # DynamiCrafter's "hybrid": the given frames (m ∘ z, m) are ALSO concatenated to x_t along channels. That
    # concatenation is conditions.context_frames itself, so true (the default) changes nothing: with context
    # frames they are concatenated, without them there is nothing to concatenate. false: with image_encoder=latent,
    # the given frames are NOT concatenated and reach the model only through the image branch (VC1's image-to-video)
    image_concat: bool = True

    takes: ClassVar[frozenset] = frozenset({"labels", "text", "fps", "context_frames", "image"})
    joint_images: ClassVar[bool] = True  # image frames bypass every temporal layer
    RANGES: ClassVar[tuple] = (("model.layers_per_block", 1, 16), ("model.num_heads", 1, None),
                               ("model.head_channels", 1, None), ("model.norm_num_groups", 1, None),
                               ("model.transformer_layers", 1, 64), ("model.temporal_length", 1, 4096),
                               ("model.input_attention_heads", 1, None),
                               ("model.input_attention_head_channels", 1, None),
                               ("model.image_token_dim", 1, None), ("model.image_patch", 1, None),
                               ("model.image_encoder_depth", 0, 64), ("model.image_encoder_heads", 1, None),
                               ("model.resampler_queries", 1, 4096), ("model.resampler_depth", 1, 64),
                               ("model.resampler_dim", 1, None), ("model.resampler_heads", 1, None),
                               ("model.resampler_head_channels", 1, None), ("model.image_scale", 0.0, None))
    # the image branch's keys, and their values without one
    IMAGE_KEYS: ClassVar[dict] = {"image_token_dim": None, "image_patch": 1, "image_encoder_depth": 2,
                                  "image_encoder_heads": 4, "resampler_queries": 16, "resampler_depth": 4,
                                  "resampler_dim": None, "resampler_heads": 12, "resampler_head_channels": 64,
                                  "image_scale": 1.0, "image_scale_learnable": False, "image_concat": True}

    @staticmethod
    def migrate(section: dict) -> list[tuple[str, str]]:
        """VideoCrafter's own configs switch the frame rate on in the model (``fps_cond``); here it is a condition
        of the run, which the trainer and the pipelines read: point there."""
        if "fps_cond" in section:
            raise ConfigError(f"model.fps_cond={section['fps_cond']!r}: the frame-rate embedding is a condition of the "
                              "run here: set conditions.fps (true/false) and remove model.fps_cond")
        return []

    def dims(self) -> UNetDims:
        """The U-Net's shape: the named size, overridden by the fields that are set; checked."""
        return unet_dims(self, VIDEOCRAFTER_SIZES)

    def input_head_channels(self) -> int:
        """Channels per head of the temporal transformer after conv_in."""
        if self.input_attention_head_channels is not None:
            return self.input_attention_head_channels
        dims = self.dims()
        return dims.block_out_channels[0] // dims.heads()[0]

    def image_token_width(self) -> Optional[int]:
        """The width of the tokens the resampler reads (None without an image branch)."""
        if self.image_encoder == "none":
            return None
        return self.image_token_dim if self.image_token_dim is not None or self.image_encoder == "tokens" else 64

    def check_image(self, conditions) -> None:
        """The image branch's rules against the run's conditions (also checked when a model is built)."""
        mode = self.image_encoder
        if mode == "none":
            changed = [k for k, v in self.IMAGE_KEYS.items() if getattr(self, k) != v]
            if changed:
                raise ConfigError(f"model.{changed[0]}={getattr(self, changed[0])!r} is an image-branch key: set "
                                  "model.image_encoder (latent or tokens) or leave it at its default")
            if conditions.image:
                raise ConfigError("conditions.image (image tokens) needs model.image_encoder=tokens to read them")
            return
        if not conditions.text_channels:
            raise ConfigError(f"model.image_encoder={mode}: the image cross-attention shares the text's query and "
                              "width: set conditions.text_channels")
        if mode == "latent" and not conditions.context_frames:
            raise ConfigError("model.image_encoder=latent encodes the given first frame (context frame 0): set "
                              "conditions.context_frames=true (with conditions.context_mode=first)")
        if mode == "latent" and conditions.image:
            raise ConfigError("conditions.image (image tokens) needs model.image_encoder=tokens; "
                              "model.image_encoder=latent encodes the given first frame itself")
        if mode == "tokens" and not conditions.image:
            raise ConfigError("model.image_encoder=tokens reads Conditioning.image_tokens: set conditions.image=true")
        if mode == "tokens" and self.image_token_dim is None:
            raise ConfigError("model.image_token_dim is not set: give the image encoder's token width "
                              "(OpenCLIP ViT-H/14: 1280)")
        if not self.image_concat and mode != "latent":
            raise ConfigError("model.image_concat=false (the given frames only through the image branch) needs "
                              "model.image_encoder=latent")
        width = self.image_token_width()
        if mode == "latent" and (width % 4 or width % self.image_encoder_heads):
            raise ConfigError(f"model.image_token_dim={width} (the latent patch encoder's width) must be divisible "
                              f"by 4 (2-D sin-cos positions) and by model.image_encoder_heads="
                              f"{self.image_encoder_heads}")

    def validate(self, run) -> None:
        """VideoCrafter's rules against the rest of the run: latent size, the temporal text attention, the image
        branch."""
        check_unet_size(run, self.dims())
        if not self.temporal_self_attention_only and not run.conditions.text_channels:
            raise ConfigError("model.temporal_self_attention_only=false cross-attends to the text in the temporal "
                              "transformers: set conditions.text_channels (or leave it true)")
        self.check_image(run.conditions)
        latent = run.data.size // autoencoder_spatial_factor(run.autoencoder)
        if self.image_encoder == "latent" and latent % self.image_patch:
            raise ConfigError(f"model.image_patch={self.image_patch} does not divide the {latent}×{latent} latent "
                              f"(data.size={run.data.size})")


# family -> its config class; models/registry.py pairs each with its model class
MODEL_CONFIGS: dict[str, type] = {"latte": LatteConfig, "walt": WaltConfig, "video_ldm": VideoLDMConfig,
                                  "videocrafter": VideoCrafterConfig}


def _family_keys() -> dict[str, set[str]]:
    return {name: {f.name for f in fields(cls)} for name, cls in MODEL_CONFIGS.items()}


def model_config_from_dict(value: Any, key: str = "model") -> Any:
    """The ``model:`` section as the dataclass of its ``family`` (default latte)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of model fields, got {value!r}")
    family = value.get("family", "latte")
    if not isinstance(family, str) or family not in MODEL_CONFIGS:  # a list is not a family (nor hashable)
        raise ConfigError(f"{key}.family: {family!r} is not one of {list(MODEL_CONFIGS)}")

    def other_family(k: str, hint: str) -> str:
        owners = [name for name, keys in _family_keys().items() if k in keys and name != family]
        if owners:
            return (f": it is not a {family} key (it is a {' and '.join(owners)} key; "
                    f"set {key}.family to use that family)")
        return f": it is not a {family} key{hint}"

    return from_dict(MODEL_CONFIGS[family], value, prefix=f"{key}.", unknown_hint=other_family)
