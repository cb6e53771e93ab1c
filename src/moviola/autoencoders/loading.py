from __future__ import annotations

from pathlib import Path
from typing import Union

from moviola.autoencoders import Autoencoder, IdentityAutoencoder, build_autoencoder


def load_autoencoder(path: Union[str, Path]) -> Autoencoder:
    """``"identity"``, a diffusers AutoencoderKL directory, or the autoencoder of a moviola checkpoint."""
    if str(path) == "identity":
        return IdentityAutoencoder()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"autoencoder path does not exist: {p}")
    from moviola.training.checkpoint import CheckpointError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(p)
    except CheckpointError:
        ckpt = None
    if ckpt is not None:
        from moviola.config import config_from_json

        return build_autoencoder(config_from_json(ckpt / "config.json").autoencoder)
    from moviola.autoencoders.frame_vae import FrameVAE

    return FrameVAE.from_pretrained(p)
