from __future__ import annotations


from moviola.autoencoders.base import Autoencoder


class IdentityAutoencoder(Autoencoder):
    """Pixel-space diffusion as a special case of latent diffusion: the latent is the video."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    def encode(self, video, sample=False, generator=None):
        return video

    def decode(self, latent):
        return latent
