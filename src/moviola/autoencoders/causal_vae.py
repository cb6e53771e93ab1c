"""W.A.L.T's causal 3-D VAE: the MAGVIT-v2 tokenizer's CNN encoder/decoder with the quantizer removed.

The encoder is a stack of causal 3-D convolutions and residual blocks that outputs a diagonal
Gaussian (mean, logvar) per latent position; the decoder mirrors it and upsamples by depth-to-space
and depth-to-time. Defaults: 8× spatial and 4× temporal compression, 8 latent channels (W.A.L.T).

**Frame-count rule.** With temporal factor f (4 by default) a video must have ``1 + f·k`` frames
(1, 5, 9, 13, 17, ...). Frame 0 is encoded on its own into latent frame 0 and each following group
of f frames into one more latent frame: ``1 + f·k`` frames <-> ``1 + k`` latent frames, and
``decode`` returns ``1 + f·k`` frames again. An image is a one-frame video, so images and videos
share one latent space. Any other frame count is refused with a ValueError naming the nearest valid
counts, unless ``encode(..., pad=True)``: the last frame is then repeated up to the next valid count
(and ``decode`` returns that padded length; trimming is the caller's business).

**Causality.** Every convolution sees the current and the ``kt - 1`` previous frames in time;
before frame 0 the past is frame 0 itself, replicated. GroupNorm is computed per frame (never over
time). So latent frame j depends only on frames <= f·j, encoding frame 0 alone gives exactly latent
frame 0, and decoded frame i depends only on latent frames <= ceil(i / f).

**Chunking.** ``encode(video, chunk_frames=c)`` runs the encoder on ``1 + c`` frames, then ``c``
at a time (c a multiple of f; or give the chunk sizes as a list: the first ``1 + f·m``, the rest
multiples of f); ``decode(latent, chunk_latents=n)`` runs n latent frames at a time. Each causal
conv carries the frames of the previous chunk its next window still needs, so chunked == unchunked
(up to float rounding) and memory does not grow with the video's length.

**Tiling.** ``tile_size``/``tile_overlap`` (pixels, multiples of the spatial factor) cut large frames
into overlapping tiles, processed independently and blended with linear ramps over the overlaps.

**Latent normalization.** ``latent = (z - latent_shift) * latent_scale`` per channel; both are
buffers (saved in the state dict), set from data by ``measure_latent_stats``.

**Training.** ``encode_dist``, ``decode_raw`` and ``forward`` keep gradients (a trainer adds L1/L2,
``gaussian_kl`` and adversarial losses); ``encode``/``decode`` are ``no_grad`` inference wrappers.
"""
from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from moviola.autoencoders.base import Autoencoder, AutoencoderOutput

Chunks = Union[int, Sequence[int], None]


# --------------------------------------------------------------------------------------------
# Building blocks: every layer takes ``(x, cache)``. ``cache`` is None for a one-pass run, or a
# dict (module -> carried state) shared by all layers across the chunks of one video.
# --------------------------------------------------------------------------------------------

class CausalConv3d(nn.Module):
    """A Conv3d padded only on the past side of time: the first chunk gets ``kt - 1`` copies of
    frame 0 in front; later chunks get the previous chunk's frames that no window has consumed yet."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.kt, self.st = kernel, stride[0]
        # spatial padding is the usual zero "same" padding; time is padded by hand in forward
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        if cache is not None and self in cache:
            x = torch.cat([cache[self], x], dim=2)  # (B, C, n_carried + T, H, W)
        else:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1), x], dim=2)  # (B, C, kt-1+T, H, W)
        if cache is not None:
            # windows start every `st` frames; carry everything from the first window not computed yet
            # (kt-1 frames at stride 1). clone() so the cache does not pin this whole chunk in memory.
            n_out = (x.shape[2] - self.kt) // self.st + 1
            cache[self] = x[:, :, n_out * self.st:].clone()
        return self.conv(x)


class FrameGroupNorm(nn.Module):
    """GroupNorm over (C/G, H, W) of each frame separately. nn.GroupNorm on a 5-D tensor would pool
    statistics over time: frame 0 would then depend on future frames and on where chunks are cut."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x.shape
        # statistics in fp32 even under bf16 autocast: a variance in bf16 loses most of its digits
        g = x.float().reshape(B, self.groups, C // self.groups, T, H, W)  # (B, G, C/G, T, H, W)
        var, mean = torch.var_mean(g, dim=(2, 4, 5), keepdim=True, correction=0)
        y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(B, C, T, H, W).to(x.dtype)  # (B, C, T, H, W)
        return y * self.weight.view(1, C, 1, 1, 1).to(x.dtype) + self.bias.view(1, C, 1, 1, 1).to(x.dtype)


class CausalResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = FrameGroupNorm(groups, cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = FrameGroupNorm(groups, cout), CausalConv3d(cout, cout)
        # a 1×1×1 conv looks at one frame, so the skip path needs no cache
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class CausalUpsample(nn.Module):
    """Depth-to-space-and-time (MAGVIT-v2): a 1×1×1 conv makes ``ft·fs·fs`` versions of each channel,
    unfolded into ft frames and fs×fs pixels (a 3×3×3 conv here would cost ft·fs·fs times a res-block
    conv, 57M parameters at 512 channels; the res blocks that follow do the mixing). Latent frame 0
    stands for one frame, not ft, so its first ``ft - 1`` outputs are dropped: 1 + k -> 1 + ft·k frames."""

    def __init__(self, channels: int, ft: int, fs: int):
        super().__init__()
        self.ft, self.fs = ft, fs
        r = ft * fs * fs
        self.conv = nn.Conv3d(channels, channels * r, 1)  # one frame in, one out: causal, nothing to carry
        if r > 1:  # ICNR init: all sub-positions start equal (nearest-neighbour upsampling, no checkerboard)
            with torch.no_grad():
                self.conv.weight.copy_(self.conv.weight[::r].repeat_interleave(r, dim=0))
                self.conv.bias.copy_(self.conv.bias[::r].repeat_interleave(r, dim=0))

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        ft, fs = self.ft, self.fs
        y = self.conv(x).view(B, C, ft, fs, fs, T, H, W)  # (B, C, ft, fs, fs, T, H, W)
        y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C, T, ft, H, fs, W, fs)
        y = y.reshape(B, C, T * ft, H * fs, W * fs)  # (B, C, T·ft, H·fs, W·fs)
        first = cache is None or self not in cache
        if cache is not None:
            cache[self] = None  # only marks "the first chunk is done": nothing to carry
        return y[:, :, ft - 1:] if first else y


class CausalCNN(nn.Module):
    """conv_in -> blocks -> GroupNorm -> SiLU -> conv_out: the shape of both encoder and decoder."""

    def __init__(self, cin: int, cout: int, width_in: int, blocks: list[nn.Module], width_out: int, groups: int):
        super().__init__()
        self.conv_in = CausalConv3d(cin, width_in)
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = FrameGroupNorm(groups, width_out)
        self.conv_out = CausalConv3d(width_out, cout)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        h = self.conv_in(x, cache)
        # checkpointing re-runs blocks in backward, which would write a cache twice: one-pass runs only
        ckpt = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, use_reentrant=False) if ckpt else block(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


# --------------------------------------------------------------------------------------------
# Tiling helpers
# --------------------------------------------------------------------------------------------

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest evenly spaced tiles of length ``tile`` that cover ``size`` with
    at least ``overlap`` between neighbours; the last tile ends exactly at ``size``."""
    if size <= tile:
        return [0]
    n = 1 + -(-(size - tile) // (tile - overlap))  # ceil division
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def blend_weights(size: int, starts: Sequence[int], tile: int) -> torch.Tensor:
    """(n_tiles, size) weights that sum to 1 at every position: each tile ramps linearly across
    its overlap with a neighbour (a pair's ramps add up to 1) and is 1 elsewhere inside the tile."""
    tile = min(tile, size)
    pos = torch.arange(size, dtype=torch.float64)
    w = torch.zeros(len(starts), size, dtype=torch.float64)
    for i, s in enumerate(starts):
        r = torch.ones(size, dtype=torch.float64)
        if i > 0:
            r = torch.minimum(r, (pos - s + 1) / (starts[i - 1] + tile - s + 1))
        if i < len(starts) - 1:
            r = torch.minimum(r, (s + tile - pos) / (s + tile - starts[i + 1] + 1))
        w[i] = torch.where((pos >= s) & (pos < s + tile), r, torch.zeros(()))
    # pairs already sum to 1; dividing fixes the places where three tiles meet (tiny overlaps)
    return (w / w.sum(0)).float()


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over each sample's latent: shape (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------

class CausalVAE(Autoencoder):
    """The quantizer-free MAGVIT-v2 causal 3-D VAE of W.A.L.T; see the module docstring for the rules.

    ``channel_mults`` gives one level per entry (width ``base_channels · mult``); between consecutive
    levels the encoder downsamples by 2 in time where ``temporal_downsample`` is True and by 2 in space
    where ``spatial_downsample`` is True (MAGVIT-v2 defers time to the later levels).
    """

    encodes_frames_alone = False  # latent frame k > 0 also sees the pixel frames before its own
    decodes_frames_alone = False  # a causal decoder: pixel frames see the latent frames before theirs

    def __init__(self, in_channels: int = 3, base_channels: int = 128, channel_mults: Sequence[int] = (1, 2, 2, 4),
                 num_res_blocks: int = 2, temporal_downsample: Sequence[bool] = (False, True, True),
                 spatial_downsample: Sequence[bool] = (True, True, True), latent_channels: int = 8,
                 norm_groups: int = 32, logvar_clamp: tuple[float, float] = (-30.0, 20.0),
                 gradient_checkpointing: bool = False, chunk_frames: int | None = None,
                 tile_size: int | None = None, tile_overlap: int = 0):
        super().__init__()
        levels = len(channel_mults)
        if levels < 1 or len(temporal_downsample) != levels - 1 or len(spatial_downsample) != levels - 1:
            raise ValueError(f"temporal_downsample and spatial_downsample need one entry per level transition "
                             f"({levels - 1} for channel_mults={tuple(channel_mults)}), got "
                             f"{tuple(temporal_downsample)} and {tuple(spatial_downsample)}")
        widths = [base_channels * m for m in channel_mults]
        if any(w % norm_groups for w in widths):
            raise ValueError(f"every level width {widths} must be divisible by norm_groups={norm_groups}")
        self._config = dict(in_channels=in_channels, base_channels=base_channels, channel_mults=list(channel_mults),
                            num_res_blocks=num_res_blocks, temporal_downsample=[bool(b) for b in temporal_downsample],
                            spatial_downsample=[bool(b) for b in spatial_downsample], latent_channels=latent_channels,
                            norm_groups=norm_groups, logvar_clamp=list(logvar_clamp),
                            gradient_checkpointing=gradient_checkpointing, chunk_frames=chunk_frames,
                            tile_size=tile_size, tile_overlap=tile_overlap)
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.temporal_factor = 2 ** sum(map(bool, temporal_downsample))
        self.spatial_factor = 2 ** sum(map(bool, spatial_downsample))
        self.logvar_clamp = tuple(logvar_clamp)
        self.chunk_frames, self.tile_size, self.tile_overlap = chunk_frames, tile_size, tile_overlap
        G = norm_groups

        enc: list[nn.Module] = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(CausalResBlock(cin, w, G))
                cin = w
            if i < levels - 1:  # a strided causal conv: kernel 3, stride 2 in time keeps 1 + 2m -> 1 + m
                st, ss = 1 + bool(temporal_downsample[i]), 1 + bool(spatial_downsample[i])
                enc.append(CausalConv3d(w, w, 3, stride=(st, ss, ss)))
        enc += [CausalResBlock(cin, cin, G), CausalResBlock(cin, cin, G)]  # middle
        self.encoder = CausalCNN(in_channels, 2 * latent_channels, widths[0], enc, cin, G)

        dec: list[nn.Module] = [CausalResBlock(widths[-1], widths[-1], G), CausalResBlock(widths[-1], widths[-1], G)]
        cin = widths[-1]
        for i in reversed(range(levels)):
            for _ in range(num_res_blocks):
                dec.append(CausalResBlock(cin, widths[i], G))
                cin = widths[i]
            if i > 0:  # mirrors the encoder's transition from level i-1 to level i
                dec.append(CausalUpsample(cin, 1 + bool(temporal_downsample[i - 1]),
                                          1 + bool(spatial_downsample[i - 1])))
        self.decoder = CausalCNN(latent_channels, in_channels, widths[-1], dec, cin, G)
        self.set_gradient_checkpointing(gradient_checkpointing)

        # per-channel latent normalization, measured on data (measure_latent_stats); identity until then
        self.register_buffer("latent_shift", torch.zeros(latent_channels))
        self.register_buffer("latent_scale", torch.ones(latent_channels))

    # ---------------------------------------------------------------- config and files

    def to_config(self) -> dict:
        """The constructor arguments (JSON-safe); the run-time settings as they are now."""
        config = json.loads(json.dumps(self._config))  # a deep copy that is known to be JSON-safe
        config.update(chunk_frames=self.chunk_frames, tile_size=self.tile_size, tile_overlap=self.tile_overlap,
                      gradient_checkpointing=self.encoder.gradient_checkpointing)
        return config

    @classmethod
    def from_config(cls, config: dict) -> CausalVAE:
        config = {k: v for k, v in config.items() if not k.startswith("_")}  # e.g. "_class_name"
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if set(config) - known:
            raise ValueError(f"unknown CausalVAE config keys {sorted(set(config) - known)}; known: {sorted(known)}")
        for key in ("channel_mults", "temporal_downsample", "spatial_downsample", "logvar_clamp"):
            if key in config:
                config[key] = tuple(config[key])
        return cls(**config)

    def save_pretrained(self, path: str | Path) -> None:
        """A directory with config.json and model.safetensors (latent statistics included)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"_class_name": "CausalVAE", **self.to_config()}, indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> CausalVAE:
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise FileNotFoundError(f"no CausalVAE at {path}: expected config.json and model.safetensors")
        model = cls.from_config({**json.loads((path / "config.json").read_text()), **overrides})
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval()

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.gradient_checkpointing = self.decoder.gradient_checkpointing = enabled

    # ---------------------------------------------------------------- shapes and rules

    def _check_frames(self, frames: int) -> None:
        f = self.temporal_factor
        if frames >= 1 and (frames - 1) % f == 0:
            return
        if frames < 1:
            raise ValueError(f"got {frames} frames: a video needs at least 1 frame (1 + {f}·k frames)")
        lo = 1 + f * ((frames - 1) // f)
        raise ValueError(f"the causal VAE needs 1 + {f}·k frames (1, {1 + f}, {1 + 2 * f}, {1 + 3 * f}, ...) "
                         f"so frame 0 is encoded alone and each {f} later frames make one latent frame; got "
                         f"{frames} frames: use {lo} or {lo + f} frames, or encode(..., pad=True) to repeat the "
                         "last frame")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(c, 1 + k, h, w) for ``1 + f·k`` frames; other frame counts raise ValueError."""
        self._check_frames(frames)
        c, _, h, w = super().latent_shape(frames, height, width)
        return (c, 1 + (frames - 1) // self.temporal_factor, h, w)

    def _chunk_sizes(self, total: int, chunks: Chunks, unit: int, first_rem: int, what: str) -> list[int] | None:
        """Split ``total`` frames into chunks: ``first_rem + unit·m`` first, multiples of ``unit`` after."""
        if chunks is None:
            return None
        if isinstance(chunks, int):
            if chunks <= 0 or chunks % unit:
                raise ValueError(f"{what} must be a positive multiple of {unit}, got {chunks}")
            first = min(first_rem + chunks, total)
            sizes = [first] + [chunks] * ((total - first) // chunks)
            rest = total - sum(sizes)
            return sizes + [rest] if rest else sizes
        sizes = [int(s) for s in chunks]
        ok = (sum(sizes) == total and all(s > 0 for s in sizes) and (sizes[0] - first_rem) % unit == 0
              and all(s % unit == 0 for s in sizes[1:]))
        if not ok:
            rule = f", the first {first_rem} + {unit}·m and the others multiples of {unit}" if unit > 1 else ""
            raise ValueError(f"{what}={sizes} must be positive sizes adding up to {total}{rule}")
        return sizes

    @staticmethod
    def _run(net: CausalCNN, x: torch.Tensor, sizes: list[int] | None) -> torch.Tensor:
        if sizes is None or len(sizes) == 1:
            return net(x)
        cache: dict = {}  # carried across the chunks of this one video, then dropped
        return torch.cat([net(part, cache) for part in x.split(sizes, dim=2)], dim=2)  # (B, C, T_out, H, W)

    # ---------------------------------------------------------------- tiling

    def _tiled(self, fn, x: torch.Tensor, tile_size: int | None, overlap: int, encoding: bool) -> torch.Tensor:
        """Run ``fn`` on overlapping spatial tiles of x and blend them. Tiles are laid out on the latent
        grid, so pixel tiles and latent tiles always correspond exactly."""
        sf = self.spatial_factor
        if tile_size is None:
            return fn(x)
        if tile_size % sf or overlap % sf or not 0 <= overlap < tile_size:
            raise ValueError(f"tile_size={tile_size} and tile_overlap={overlap} must be multiples of the spatial "
                             f"factor {sf} with 0 <= tile_overlap < tile_size")
        fin, fout = (sf, 1) if encoding else (1, sf)  # grid cells -> input / output elements
        h, w = x.shape[-2] // fin, x.shape[-1] // fin  # the latent grid
        t, o = tile_size // sf, overlap // sf
        if h <= t and w <= t:
            return fn(x)
        ys, xs = tile_starts(h, t, o), tile_starts(w, t, o)
        th, tw = min(t, h), min(t, w)
        wy = blend_weights(h * fout, [s * fout for s in ys], th * fout).to(x.device)  # (n_y, H_out)
        wx = blend_weights(w * fout, [s * fout for s in xs], tw * fout).to(x.device)  # (n_x, W_out)
        out = None
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                part = fn(x[..., y0 * fin:(y0 + th) * fin, x0 * fin:(x0 + tw) * fin])  # (B, C, T, th·fout, tw·fout)
                if out is None:
                    out = part.new_zeros(*part.shape[:3], h * fout, w * fout)  # (B, C, T, H_out, W_out)
                oy, ox = slice(y0 * fout, (y0 + th) * fout), slice(x0 * fout, (x0 + tw) * fout)
                out[..., oy, ox] += part * (wy[i, oy, None] * wx[j, None, ox]).to(part.dtype)
        return out

    # ---------------------------------------------------------------- training paths (with gradients)

    def encode_dist(self, video: torch.Tensor, chunk_frames: Chunks = None, tile_size: int | None = None,
                    tile_overlap: int | None = None, pad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar), each (B, c, 1 + k, h, w), un-normalized, of a (B, 3, 1 + f·k, H, W) video."""
        if video.ndim != 5 or video.shape[1] != self.in_channels:
            raise ValueError(f"expected a video (B, {self.in_channels}, T, H, W), got shape {tuple(video.shape)}")
        T, H, W = video.shape[2:]
        if H % self.spatial_factor or W % self.spatial_factor:
            raise ValueError(f"frame size {H}×{W} is not divisible by the spatial factor {self.spatial_factor}")
        f = self.temporal_factor
        if pad and T >= 1 and (T - 1) % f:
            extra = f - (T - 1) % f
            video = torch.cat([video, video[:, :, -1:].expand(-1, -1, extra, -1, -1)], dim=2)  # (B, C, 1+f·k, H, W)
            T += extra
        self._check_frames(T)
        sizes = self._chunk_sizes(T, self.chunk_frames if chunk_frames is None else chunk_frames, f, 1, "chunk_frames")
        tile = self.tile_size if tile_size is None else tile_size
        overlap = self.tile_overlap if tile_overlap is None else tile_overlap
        # blend (mean, logvar) across tiles before any sampling, so the noise is not averaged down in overlaps
        moments = self._tiled(lambda x: self._run(self.encoder, x, sizes), video, tile, overlap, encoding=True)
        mean, logvar = moments.chunk(2, dim=1)  # 2 × (B, c, t, h, w)
        return mean, logvar.clamp(*self.logvar_clamp)

    def decode_raw(self, z: torch.Tensor, chunk_latents: Chunks = None, tile_size: int | None = None,
                   tile_overlap: int | None = None) -> torch.Tensor:
        """Un-normalized latent (B, c, 1 + k, h, w) -> video (B, 3, 1 + f·k, H, W)."""
        self._check_latent(z)
        if chunk_latents is None and self.chunk_frames is not None:
            chunk_latents = max(1, self.chunk_frames // self.temporal_factor)
        sizes = self._chunk_sizes(z.shape[2], chunk_latents, 1, 0, "chunk_latents")
        tile = self.tile_size if tile_size is None else tile_size
        overlap = self.tile_overlap if tile_overlap is None else tile_overlap
        return self._tiled(lambda x: self._run(self.decoder, x, sizes), z, tile, overlap, encoding=False)

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected a latent (B, {self.latent_channels}, t, h, w), got shape {tuple(z.shape)}")

    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Reconstruct through the posterior: a reparameterized sample (or the mean), for training."""
        mean, logvar = self.encode_dist(video)
        z = self._sample(mean, logvar, generator) if sample else mean
        return AutoencoderOutput(self.decode_raw(z), mean, logvar)

    def last_layer(self) -> torch.Tensor:
        """The decoder's output convolution weight (the adaptive adversarial weight's reference)."""
        return self.decoder.conv_out.conv.weight

    @staticmethod
    def _sample(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # drawn on the CPU (where the trainer's generators live), then moved: the same noise on any device
        noise = torch.randn(mean.shape, generator=generator).to(mean.device, mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    # ---------------------------------------------------------------- normalization

    def _stat(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(1, -1, 1, 1, 1)  # (1, c, 1, 1, 1): broadcasts over (B, c, t, h, w)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self._stat(self.latent_shift)) * self._stat(self.latent_scale)

    def denormalize(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self._stat(self.latent_scale) + self._stat(self.latent_shift)

    @torch.no_grad()
    def measure_latent_stats(self, videos: Iterable[torch.Tensor], sample: bool = False,
                             generator: torch.Generator | None = None,
                             **encode_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Set ``latent_shift`` / ``latent_scale`` so the normalized latents of ``videos`` (an iterable of
        (B, 3, T, H, W) batches) have mean 0 and std 1 per channel. Returns the measured (mean, std)."""
        total = torch.zeros(self.latent_channels, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for video in videos:
            mean, logvar = self.encode_dist(video.to(self.latent_shift.dtype), **encode_kwargs)
            z = (self._sample(mean, logvar, generator) if sample else mean).double().cpu()
            z = z.transpose(0, 1).reshape(self.latent_channels, -1)  # (c, B·t·h·w)
            total += z.sum(1)
            total_sq += z.pow(2).sum(1)
            count += z.shape[1]
        if count == 0:
            raise ValueError("measure_latent_stats got no videos")
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-8)  # a constant channel: no blow-up
        self.latent_shift.copy_(mean.to(self.latent_shift))
        self.latent_scale.copy_((1.0 / std).to(self.latent_scale))
        return mean.float(), std.float()

    # ---------------------------------------------------------------- the Autoencoder contract

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None, *,
               chunk_frames: Chunks = None, tile_size: int | None = None, tile_overlap: int | None = None,
               pad: bool = False) -> torch.Tensor:
        """Video (B, 3, 1 + f·k, H, W) in [-1, 1] -> normalized latent (B, c, 1 + k, H/s, W/s)."""
        mean, logvar = self.encode_dist(video.to(self.latent_shift.dtype), chunk_frames, tile_size, tile_overlap, pad)
        return self.normalize(self._sample(mean, logvar, generator) if sample else mean)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, chunk_latents: Chunks = None, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """Normalized latent (B, c, 1 + k, h, w) -> video (B, 3, 1 + f·k, h·s, w·s)."""
        self._check_latent(latent)
        z = self.denormalize(latent.to(self.latent_shift.dtype))
        return self.decode_raw(z, chunk_latents, tile_size, tile_overlap)
