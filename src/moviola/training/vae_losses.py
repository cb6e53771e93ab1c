"""Losses of autoencoder training: reconstruction + KL + a patch discriminator's adversarial loss.

- Reconstruction: L1 or L2, the mean over pixels.
- KL of the diagonal Gaussian posterior against N(0, I), summed over each sample's latent and
  divided by its pixel count (so ``kl_weight`` means the same at any resolution), times ``kl_weight``.
- Adversarial: a 3-D convolutional patch discriminator (videos; a frame is a one-frame video) with
  the hinge loss. From ``adv_start`` on, the generator gets ``-mean D(x̂)`` times
  ``adv_weight · λ``, where with ``adaptive_weight`` (VQGAN, Esser et al. 2021)
  ``λ = ‖∇_w L_rec‖ / (‖∇_w L_adv‖ + 1e-4)``, clamped to [0, 1e4], over the decoder's last layer w:
  the adversarial gradient is rescaled to the reconstruction's size, whatever their raw scales.
- LeCam regularization (Tseng et al. 2021; used by MAGVIT-v2 and W.A.L.T): the discriminator's
  outputs on real and fake are pulled towards EMAs of each other,
  ``‖relu(D(x) − ema_fake)‖² + ‖relu(ema_real − D(x̂))‖²``, which keeps D from running away
  on small data.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator3D(nn.Module):
    """Strided 3-D convolutions to a map of real/fake logits ``(B, 1, t, h, w)``.

    The first layer halves space only; each later one halves space and (while more than one frame
    is left) time. GroupNorm (per sample, so the batch composition does not leak into the output)
    and LeakyReLU(0.2) between layers.
    """

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(in_channels, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers):
            c_next = channels * min(2 ** i, 8)
            mods += [_TimeStridedConv(c, c_next), nn.GroupNorm(min(32, c_next // 4) or 1, c_next), nn.LeakyReLU(0.2)]
            c = c_next
        mods.append(nn.Conv3d(c, 1, (3, 3, 3), 1, (1, 1, 1)))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


class _TimeStridedConv(nn.Module):
    """A 3×4×4 convolution that halves space, and time too while there are at least 2 frames."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, (3, 4, 4), 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = 2 if x.shape[2] >= 2 else 1
        x = F.pad(x, (1, 1, 1, 1, 1, 1))
        return F.conv3d(x, self.conv.weight, self.conv.bias, stride=(st, 2, 2))


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    if kind == "l1":
        return (recon - target).abs().mean()
    if kind == "l2":
        return (recon - target).pow(2).mean()
    raise ValueError(f"reconstruction loss must be l1 or l2, got {kind!r}")


def kl_per_pixel(mean: torch.Tensor, logvar: torch.Tensor, pixels: int) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) summed over each sample's latent, over its pixel count, batch mean."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
    return kl.mean() / pixels


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def generator_adv_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """VQGAN's λ = ‖∇ rec‖ / (‖∇ adv‖ + 1e-4) on the decoder's last layer, detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()


class LeCam(nn.Module):
    """EMAs of the discriminator's mean outputs on real and fake, and the regularizer they anchor."""

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        r, f = real_logits.float().mean(), fake_logits.float().mean()
        if not bool(self.started):  # start at the first values, not at 0
            self.ema_real.copy_(r)
            self.ema_fake.copy_(f)
            self.started.fill_(True)
        else:
            self.ema_real.lerp_(r, 1 - self.decay)
            self.ema_fake.lerp_(f, 1 - self.decay)

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return (F.relu(real_logits - self.ema_fake).pow(2).mean()
                + F.relu(self.ema_real - fake_logits).pow(2).mean())


def last_layer_weight(autoencoder: nn.Module) -> Optional[torch.Tensor]:
    """The decoder's output convolution weight of a trainable autoencoder (None if it has none)."""
    if hasattr(autoencoder, "last_layer"):
        return autoencoder.last_layer()
    conv = getattr(getattr(autoencoder, "decoder", None), "conv_out", None)
    conv = getattr(conv, "conv", conv)
    return getattr(conv, "weight", None)
