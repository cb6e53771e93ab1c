"""An optional perceptual loss for autoencoder training: LPIPS (Zhang et al., CVPR 2018) on VGG16.

The distance between two images ``x, y`` in [-1, 1]:

1. shift and scale each channel (LPIPS's constants, mapping [-1, 1] to ImageNet-normalized input);
2. VGG16's convolutional features at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3;
3. each feature vector unit-normalized over channels, ``f / (‖f‖₂ + 1e-10)``;
4. the squared difference, weighted per channel by LPIPS's learned non-negative linear layer
   (or summed over channels unweighted when no linear layer is given: LPIPS's "baseline");
5. averaged over positions and summed over the five layers.

Nothing is downloaded: the weights come from files the user names (``vae.perceptual_weights``),
read with ``torch.load(weights_only=True)`` or safetensors. Recognized layouts:

- VGG16 features as torchvision stores them (``features.{i}.weight/bias``, e.g. the file
  ``vgg16-397923af.pth``), or as an LPIPS model's state dict stores them (``net.slice{k}.{i}.*``);
- LPIPS's linear layers as the ``lpips`` package ships them (``lin{k}.model.1.weight``, shape
  ``(1, C, 1, 1)``; the file ``lpips/weights/v0.1/vgg.pth``).

One file may hold both; several files are merged. The network is frozen and kept in fp32.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from torch import nn

# VGG16's convolutional part: channel counts, "M" = 2×2 max-pool (torchvision's `features` indices follow
# from this list: each conv is followed by a ReLU, so conv i sits at index 2·(convs before) + (pools before)).
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# torchvision `features` index one past each tapped ReLU (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3)
TAPS = (4, 9, 16, 23, 30)
TAP_CHANNELS = (64, 128, 256, 512, 512)
MIN_SIZE = 16  # four 2× poolings before relu5_3
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class PerceptualWeightsError(ValueError):
    pass


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers[:TAPS[-1]])  # the last pool is never used


class LPIPS(nn.Module):
    """LPIPS distance on VGG16; ``forward(x, y)`` gives one distance per image, shape ``(N,)``."""

    def __init__(self, linear: bool = True):
        super().__init__()
        self.features = _vgg16_features()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.lin = nn.ParameterList([nn.Parameter(torch.ones(c)) for c in TAP_CHANNELS]) if linear else None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":  # frozen: always in eval mode
        return super().train(False)

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        out, start = [], 0
        for end in TAPS:
            for i in range(start, end):
                x = self.features[i](x)
            out.append(x)
            start = end
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS compares two (N, 3, H, W) batches of the same shape, got {tuple(x.shape)} "
                             f"and {tuple(y.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS needs frames of at least {MIN_SIZE}×{MIN_SIZE} pixels (VGG16's relu5_3 is "
                             f"1/16 of the frame), got {tuple(x.shape[-2:])}")
        with torch.autocast(x.device.type, enabled=False):
            feats = self.taps(torch.cat([x.float(), y.float()]))
            n = x.shape[0]
            total = x.new_zeros(n, dtype=torch.float32)
            for k, f in enumerate(feats):
                f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = (f[:n] - f[n:]).pow(2)
                d = (d * self.lin[k].view(1, -1, 1, 1)).sum(1) if self.lin is not None else d.sum(1)
                total = total + d.mean((1, 2))
        return total

    @classmethod
    def from_files(cls, paths: Sequence[str | Path]) -> "LPIPS":
        """Build from local weight files (see the module docstring); an error names what is missing."""
        sd = _read_merged(paths)
        model = cls(linear=any(re.fullmatch(r"lin\d\.model\.1\.weight", k) for k in sd))
        own = model.features.state_dict()
        feats = _features_from(sd, own)
        missing = sorted(set(own) - set(feats))
        if missing:
            raise PerceptualWeightsError(
                f"vae.perceptual_weights {list(map(str, paths))}: no VGG16 features found (missing {missing[:4]}…); "
                f"give torchvision's vgg16 state dict (keys features.N.weight, e.g. vgg16-397923af.pth) or a full "
                f"LPIPS state dict (keys net.sliceK.N.weight)")
        for k, v in feats.items():
            if own[k].shape != v.shape:
                raise PerceptualWeightsError(f"vae.perceptual_weights: features.{k} has shape {tuple(v.shape)}, "
                                             f"VGG16 needs {tuple(own[k].shape)} (not a VGG16?)")
        model.features.load_state_dict(feats)
        if model.lin is not None:
            for k, c in enumerate(TAP_CHANNELS):
                key = f"lin{k}.model.1.weight"
                if key not in sd:
                    raise PerceptualWeightsError(f"vae.perceptual_weights: LPIPS linear layers incomplete, {key} "
                                                 f"missing (expected lin0..lin4.model.1.weight)")
                w = sd[key].float()
                if w.numel() != c:
                    raise PerceptualWeightsError(f"vae.perceptual_weights: {key} has {w.numel()} weights, "
                                                 f"relu{k + 1} has {c} channels")
                model.lin[k].data.copy_(w.flatten())
        model.requires_grad_(False)
        return model


def _read_merged(paths: Iterable[str | Path]) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise PerceptualWeightsError(f"vae.perceptual_weights: {p} is not a file (give local VGG16 / LPIPS "
                                         f"weight files; nothing is downloaded)")
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            part = load_file(str(p))
        else:
            try:
                part = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # pickles with code, HTML pages saved as .pth, truncated files
                raise PerceptualWeightsError(f"vae.perceptual_weights: {p} is not a readable weights file "
                                             f"({type(e).__name__}: {str(e)[:200]})") from e
        if isinstance(part, dict) and "state_dict" in part and isinstance(part["state_dict"], dict):
            part = part["state_dict"]
        if not isinstance(part, dict):
            raise PerceptualWeightsError(f"vae.perceptual_weights: {p} holds a {type(part).__name__}, not a state dict")
        for k, v in part.items():
            if isinstance(v, torch.Tensor):
                sd[k.removeprefix("module.")] = v
    return sd


def _features_from(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VGG16 feature weights under torchvision's indices (the keys of ``own``), from either naming."""
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            out[k[len("features."):]] = v.float()
        elif k.startswith("net.slice"):  # net.slice{k}.{torchvision index}.weight
            _, _, idx, name = k.split(".", 3)
            out[f"{idx}.{name}"] = v.float()
    return {k: v for k, v in out.items() if k in own}


def video_lpips(model: LPIPS, recon: torch.Tensor, target: torch.Tensor, frames: int = 0,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mean LPIPS over the frames of ``(B, 3, T, H, W)`` videos; with ``frames > 0``, over that many
    frames per video drawn at random (the same draw for reconstruction and target)."""
    B, C, T, H, W = recon.shape
    if frames and frames < T:
        idx = torch.stack([torch.randperm(T, generator=generator)[:frames] for _ in range(B)]).to(recon.device)
        gather = idx.view(B, 1, frames, 1, 1).expand(B, C, frames, H, W)
        recon, target = recon.gather(2, gather), target.gather(2, gather)
        T = frames
    flat = lambda v: v.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    return model(flat(recon), flat(target)).mean()
