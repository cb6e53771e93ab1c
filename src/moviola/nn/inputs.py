"""Conditions that enter a denoiser beside x_t, shared by the families: what each expects, and the
tensors they become.

- Context frames, ``c = (m ∘ z, m)`` (Video LDM; W.A.L.T's ``c_fp``): C + 1 channels after x_t;
  zeros when no frame is given (``with_context``).
- Self-conditioning (Chen et al., Analog Bits; W.A.L.T): the previous x0 estimate, C channels;
  zeros when absent, which is exactly what the first pass of self-conditioned training gives
  (``self_cond_input``).
- A low-resolution latent (super-resolution): upsampled 2× by a learned depth-to-space
  convolution (``DepthToSpaceUpsample``), C channels.
- Text tokens (B, L, D_text) and their mask: checked (``text_tokens``) and pooled (``masked_mean``).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from moviola.conditioning import Conditioning


def with_context(x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
    """x_t (B, C, T, H, W) -> (x_t, m ∘ z, m) (B, 2C+1, T, H, W); no context given = zeros."""
    B, C, T, H, W = x.shape
    z = None if cond is None else cond.context
    if z is None:
        return torch.cat([x, x.new_zeros(B, C + 1, T, H, W)], dim=1)
    if z.shape != x.shape:
        raise ValueError(f"context must have the latent's shape {tuple(x.shape)}, got {tuple(z.shape)}")
    m = cond.context_mask
    if m is None:
        raise ValueError("context needs context_mask (B, 1, T, 1, 1) or (B, 1, T, H, W): 1 where a frame is given")
    if m.dim() != 5 or m.shape[0] != B or m.shape[1] != 1 or m.shape[2] != T or m.shape[3:] not in ((1, 1), (H, W)):
        raise ValueError(f"context_mask must have shape (B, 1, T, 1, 1) or (B, 1, T, H, W) = ({B}, 1, {T}, "
                         f"{H}, {W}), got {tuple(m.shape)}")
    m = m.to(x.dtype).expand(B, 1, T, H, W)
    return torch.cat([x, z.to(x.dtype) * m, m], dim=1)  # (B, 2C+1, T, H, W)


def self_cond_input(x: torch.Tensor, cond: Optional[Conditioning]) -> torch.Tensor:
    """The previous x0 estimate (B, C, T, H, W) of ``cond.self_cond``, or zeros when there is none."""
    est = None if cond is None else cond.self_cond
    if est is None:
        return torch.zeros_like(x)
    if est.shape != x.shape:
        raise ValueError(f"self_cond (the previous x0 estimate) must have the latent's shape {tuple(x.shape)}, "
                         f"got {tuple(est.shape)}")
    return est.to(x.dtype)


class DepthToSpaceUpsample(nn.Module):
    """A low-resolution latent (B, C, T, h, w) -> (B, C, T, 2h, 2w), frame by frame: a 3×3 convolution to
    4C channels, then depth-to-space (``pixel_shuffle``) 2× (W.A.L.T's super-resolution input)."""

    def __init__(self, channels: int, factor: int = 2):
        super().__init__()
        self.factor = factor
        self.proj = nn.Conv2d(channels, channels * factor ** 2, kernel_size=3, padding=1)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        B, C, T, h, w = low.shape
        frames = low.transpose(1, 2).reshape(B * T, C, h, w)  # (B·T, C, h, w)
        up = F.pixel_shuffle(self.proj(frames), self.factor)  # (B·T, C, f·h, f·w)
        return up.view(B, T, C, h * self.factor, w * self.factor).transpose(1, 2)  # (B, C, T, f·h, f·w)


def text_tokens(cond: Optional[Conditioning], batch: int,
                channels: int) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """The text tokens (B, L, channels) and mask (B, L) of ``cond``, checked; None when no text is given."""
    if cond is None or cond.text is None:
        return None
    text, mask = cond.text, cond.text_mask
    if text.dim() != 3 or text.shape[0] != batch or text.shape[2] != channels:
        raise ValueError(f"text must have shape (B, L, {channels}) with B = {batch}, got {tuple(text.shape)}")
    if mask is not None and mask.shape != text.shape[:2]:
        raise ValueError(f"text_mask must have shape {tuple(text.shape[:2])}, got {tuple(mask.shape)}")
    return text, mask


def masked_mean(text: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The mean of the real text tokens: (B, L, D) and a (B, L) mask -> (B, D); an empty row gives zeros."""
    mask = torch.ones(text.shape[:2], device=text.device) if mask is None else mask.to(text.dtype)  # (B, L)
    return (text * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, D)
