"""Video LDM's temporal decoder: a trained frame VAE whose decoder gets temporal layers.

A frame-wise image VAE decodes each frame alone, so its videos flicker. Video LDM (Blattmann et
al. 2023, "Align your Latents", §3.1.1) keeps the encoder frozen, so the latent space (and every
latent diffusion model trained on it) stays valid, and fine-tunes the decoder on video with
temporal mixing layers interleaved with the 2-D ones. After each chosen 2-D resnet block:

    h = α · h_spatial + (1 − α) · h_temporal,   h_temporal = h_spatial + branch(h_spatial)

where ``branch`` is a 3-D convolution residual block over (T, H, W) and/or self-attention over T
at each pixel, and α = sigmoid(logit) is one learnable scalar per layer. We compute it as
``h_spatial + (1 − α) · branch(h_spatial)``: the same number, but exactly ``h_spatial`` when the
branch outputs zeros.

Initialization: each branch's last layer is zero-initialized, so at initialization the decoder
*is* the frame decoder, bit for bit, whatever α is. α starts at 0.5, not 1: with α = 1 the
branch's output is multiplied by 1 − α = 0 and it would get no gradient (and sigmoid would be
saturated, so α would not move either). SVD's temporal decoder also starts its blend at
sigmoid(0) = 0.5. α's own gradient, ``−branch(h)``, is zero at step 0 and grows as soon as the
branch's last layer moves away from zero.

The 2-D decoder runs block by block on frames ``(B·T, C, H, W)``, exactly as diffusers'
``Decoder.forward`` does; the temporal layers reshape to ``(B, C, T, H, W)`` (convolution) or
``(B·H·W, T, C)`` (attention) and back.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

from moviola.autoencoders.base import Autoencoder, AutoencoderOutput
from moviola.autoencoders.frame_vae import FrameVAE
from moviola.nn.temporal import AlphaBlend, TemporalConvBlock, TemporalSelfAttention

PLACES = ("all", "mid", "up")
ATTENTION_PLACES = ("none", "mid", "all")
TEMPORAL_WEIGHTS = "temporal.safetensors"
BASE_FOLDER = "vae"


class TemporalDecoderVAE(Autoencoder):
    """A FrameVAE with a frozen encoder and a decoder that mixes frames (Video LDM).

    Build it with ``from_frame_vae``; ``encode`` is the frame VAE's ``encode`` (same latents, same
    normalization), ``decode`` and ``forward`` run the temporal decoder. Train
    ``trainable_parameters()``: the temporal layers and their α, plus the 2-D decoder when
    ``finetune_spatial`` (Video LDM fine-tunes the whole decoder; the encoder never trains).
    """

    temporal_factor = 1
    decodes_frames_alone = False  # its temporal layers mix the frames of a clip

    def __init__(self, frame_vae: FrameVAE, temporal_kernel: int = 3, spatial_kernel: int = 1,
                 attention: bool | str = True, where: str = "all", conv: bool = True,
                 head_dim: int = 64, alpha_init: float = 0.5, finetune_spatial: bool = False):
        super().__init__()
        attention = {True: "mid", False: "none"}.get(attention, attention)
        if where not in PLACES:
            raise ValueError(f"where must be one of {PLACES}, got {where!r}")
        if attention not in ATTENTION_PLACES:
            raise ValueError(f"attention must be True, False or one of {ATTENTION_PLACES}, got {attention!r}")
        if attention == "mid" and where == "up":
            raise ValueError("attention='mid' puts temporal attention in the mid block, which where='up' "
                             "excludes: use attention='all' or attention=False")
        self.base = frame_vae
        decoder = frame_vae.vae.decoder
        _check_decoder(decoder)
        self.options = {"temporal_kernel": temporal_kernel, "spatial_kernel": spatial_kernel, "attention": attention,
                        "where": where, "conv": conv, "head_dim": head_dim, "alpha_init": alpha_init}
        groups = decoder.conv_norm_out.num_groups

        def layers(channels: int, with_attention: bool) -> nn.ModuleList:
            out = nn.ModuleList()
            if conv:
                out.append(AlphaBlend(TemporalConvBlock(channels, groups, temporal_kernel, spatial_kernel), alpha_init))
            if with_attention:
                out.append(AlphaBlend(TemporalSelfAttention(channels, groups, head_dim), alpha_init))
            return out

        # one site after each 2-D resnet block: "mid_j" in the mid block, "up_i_j" in up block i
        self.temporal = nn.ModuleDict()
        if where in ("all", "mid"):
            for j, resnet in enumerate(decoder.mid_block.resnets):
                self.temporal[f"mid_{j}"] = layers(resnet.out_channels, attention != "none")
        if where in ("all", "up"):
            for i, block in enumerate(decoder.up_blocks):
                for j, resnet in enumerate(block.resnets):
                    self.temporal[f"up_{i}_{j}"] = layers(resnet.out_channels, attention == "all")
        for site in [s for s, mods in self.temporal.items() if len(mods) == 0]:
            del self.temporal[site]
        if len(self.temporal) == 0:
            raise ValueError("no temporal layer: set conv=True or attention=True")

        self.latent_channels = frame_vae.latent_channels
        self.spatial_factor = frame_vae.spatial_factor
        frame_vae.vae.requires_grad_(False)  # the encoder (and quant_conv) never train
        self.temporal.requires_grad_(True)
        self.finetune_spatial = finetune_spatial

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_frame_vae(cls, frame_vae: FrameVAE, temporal_kernel: int = 3, spatial_kernel: int = 1,
                       attention: bool | str = True, where: str = "all", conv: bool = True,
                       head_dim: int = 64, alpha_init: float = 0.5, finetune_spatial: bool = False,
                       copy_base: bool = True) -> TemporalDecoderVAE:
        """Temporal layers after the frame VAE's decoder blocks (defaults: a (3, 1, 1) conv block
        after every 2-D resnet, temporal attention in the mid block only, the lowest resolution,
        where it is cheap). The frame VAE is copied, so fine-tuning never changes it."""
        base = copy.deepcopy(frame_vae) if copy_base else frame_vae
        return cls(base, temporal_kernel=temporal_kernel, spatial_kernel=spatial_kernel, attention=attention,
                   where=where, conv=conv, head_dim=head_dim, alpha_init=alpha_init,
                   finetune_spatial=finetune_spatial)

    # the latent normalization is the base VAE's: one number each, shared by encode and decode
    @property
    def scaling_factor(self) -> float:
        return self.base.scaling_factor

    @scaling_factor.setter
    def scaling_factor(self, value: float) -> None:
        self.base.scaling_factor = value

    @property
    def shift_factor(self) -> float:
        return self.base.shift_factor

    @shift_factor.setter
    def shift_factor(self, value: float) -> None:
        self.base.shift_factor = value

    @property
    def chunk_frames(self) -> int:
        return self.base.chunk_frames

    @property
    def finetune_spatial(self) -> bool:
        return self._finetune_spatial

    @finetune_spatial.setter
    def finetune_spatial(self, value: bool) -> None:
        self._finetune_spatial = bool(value)
        for p in self._spatial_decoder_parameters():
            p.requires_grad_(self._finetune_spatial)

    def _spatial_decoder_parameters(self) -> list[nn.Parameter]:
        vae = self.base.vae
        post = list(vae.post_quant_conv.parameters()) if vae.post_quant_conv is not None else []
        return post + list(vae.decoder.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The temporal layers and their α; plus the 2-D decoder if ``finetune_spatial``. Never the encoder."""
        params = list(self.temporal.parameters())
        return params + self._spatial_decoder_parameters() if self.finetune_spatial else params

    @torch.no_grad()
    def alphas(self) -> dict[str, float]:
        """α of every temporal layer, by name (for logging)."""
        return {f"{site}.{k}": layer.alpha.item() for site, mods in self.temporal.items()
                for k, layer in enumerate(mods)}

    def last_layer(self) -> torch.Tensor:
        """The weight the adaptive adversarial weight differentiates: the decoder's ``conv_out``
        weight when the 2-D decoder trains; otherwise (it is frozen, so it has no gradient) the
        zero-initialized output layer of the temporal layer nearest the output."""
        conv_out = self.base.vae.decoder.conv_out.weight
        if conv_out.requires_grad:
            return conv_out
        branch = list(self.temporal.values())[-1][-1].branch
        return branch.conv2.weight if isinstance(branch, TemporalConvBlock) else branch.attn.proj.weight

    # ------------------------------------------------------------------ the decoder
    def _mix(self, site: str, h: torch.Tensor, frames: int) -> torch.Tensor:
        if site in self.temporal:
            for layer in self.temporal[site]:
                h = layer(h, frames)
        return h

    def _decode_frames(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        """diffusers' ``AutoencoderKL._decode`` (post_quant_conv, then ``Decoder.forward``), block by
        block, with the temporal layers. z: (B·T, c, h, w) un-normalized latents, whole clips."""
        vae = self.base.vae
        dec = vae.decoder
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        h = dec.conv_in(z)  # (B·T, C, h, w)
        mid = dec.mid_block  # UNetMidBlock2D.forward: resnet, then (attention, resnet) pairs
        h = self._mix("mid_0", mid.resnets[0](h, None), frames)
        for j, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:]), start=1):
            if attn is not None:
                h = attn(h, temb=None)
            h = self._mix(f"mid_{j}", resnet(h, None), frames)
        for i, block in enumerate(dec.up_blocks):  # UpDecoderBlock2D.forward: resnets, then upsamplers
            for j, resnet in enumerate(block.resnets):
                h = self._mix(f"up_{i}_{j}", resnet(h, temb=None), frames)
            for upsampler in block.upsamplers or ():
                h = upsampler(h)
        return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))  # (B·T, 3, H, W)

    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> AutoencoderOutput:
        """Reconstruct through the frozen encoder's posterior; gradients flow through the decoder only."""
        frames, B, T = self.base._frames(video)  # (B·T, 3, H, W)
        with torch.no_grad():  # frozen: no graph through the encoder
            dist = self.base.vae.encode(frames).latent_dist
        z = dist.mean
        if sample:
            noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)  # CPU generator, any device
            z = z + dist.std * noise
        recon = self._decode_frames(z, T)
        return AutoencoderOutput(self.base._unframes(recon, B, T), self.base._unframes(dist.mean, B, T),
                                 self.base._unframes(dist.logvar, B, T))

    @torch.no_grad()
    def encode(self, video: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.encode(video, sample, generator)  # the frozen encoder: the frame VAE's latents

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Whole clips at a time (a chunk of frames would cut the temporal layers' view): as many
        clips per pass as fit in ``chunk_frames`` frames, at least one."""
        T = latent.shape[2]
        dtype = self.base.vae.dtype
        parts = []
        for clips in latent.split(max(1, self.chunk_frames // T)):
            z, n, _ = self.base._frames(clips)  # (n·T, c, h, w)
            z = z / self.scaling_factor + self.shift_factor
            parts.append(self.base._unframes(self._decode_frames(z.to(dtype), T).float(), n, T))
        return torch.cat(parts)  # (B, 3, T, H, W)

    @torch.no_grad()
    def measure_latent_stats(self, videos, generator: torch.Generator | None = None) -> tuple[float, float]:
        """The base frame VAE's (the encoder is the same, so are the latents)."""
        return self.base.measure_latent_stats(videos, generator)

    # ------------------------------------------------------------------ files
    def to_config(self) -> dict:
        return {"_class_name": type(self).__name__, "base": BASE_FOLDER, **self.options,
                "finetune_spatial": self.finetune_spatial, "scaling_factor": self.scaling_factor,
                "shift_factor": self.shift_factor, "chunk_frames": self.chunk_frames}

    def save_pretrained(self, path: str | Path) -> None:
        """A directory: ``vae/`` (the base frame VAE, diffusers format, with the fine-tuned 2-D decoder
        if it trained; loadable alone by FrameVAE.from_pretrained), ``config.json`` and
        ``temporal.safetensors`` (the temporal layers and α's)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(path / BASE_FOLDER)
        (path / "config.json").write_text(json.dumps(self.to_config(), indent=2))
        save_file({k: v.detach().contiguous() for k, v in self.temporal.state_dict().items()},
                  str(path / TEMPORAL_WEIGHTS))

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> TemporalDecoderVAE:
        """A directory written by ``save_pretrained``. ``overrides``: ``finetune_spatial``, ``chunk_frames``."""
        from safetensors.torch import load_file

        path = Path(path)
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        if config.get("_class_name") != cls.__name__ or not (path / TEMPORAL_WEIGHTS).is_file():
            raise FileNotFoundError(
                f"no TemporalDecoderVAE at {path}: expected config.json with _class_name "
                f"{cls.__name__!r} and {TEMPORAL_WEIGHTS} (to add new temporal layers to a frame VAE, "
                "use TemporalDecoderVAE.from_frame_vae(FrameVAE.from_pretrained(path)))")
        unknown = set(overrides) - {"finetune_spatial", "chunk_frames"}
        if unknown:
            raise ValueError(f"unknown override(s) {sorted(unknown)}: only finetune_spatial and chunk_frames")
        config.update(overrides)
        base = FrameVAE.from_pretrained(path / config["base"], scaling_factor=config["scaling_factor"],
                                        shift_factor=config["shift_factor"], chunk_frames=config["chunk_frames"])
        options = {k: config[k] for k in ("temporal_kernel", "spatial_kernel", "attention", "where", "conv",
                                          "head_dim", "alpha_init", "finetune_spatial")}
        model = cls(base, **options)
        model.temporal.load_state_dict(load_file(str(path / TEMPORAL_WEIGHTS)))
        return model


def _check_decoder(decoder: nn.Module) -> None:
    """We re-run diffusers' Decoder block by block, so only the block types we re-run are accepted."""
    problems = []
    if type(decoder.mid_block).__name__ != "UNetMidBlock2D":
        problems.append(f"mid block {type(decoder.mid_block).__name__}")
    problems += [f"up block {type(b).__name__}" for b in decoder.up_blocks if type(b).__name__ != "UpDecoderBlock2D"]
    if not isinstance(decoder.conv_norm_out, nn.GroupNorm):
        problems.append(f"output norm {type(decoder.conv_norm_out).__name__} (norm_type='spatial')")
    if problems:
        raise ValueError("TemporalDecoderVAE needs an SD-style decoder (UNetMidBlock2D, UpDecoderBlock2D, "
                         f"GroupNorm output); this one has: {', '.join(problems)}")
