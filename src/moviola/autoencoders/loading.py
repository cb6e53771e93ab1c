"""``moviola.load_autoencoder``: any autoencoder moviola can use, from a path."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from moviola.autoencoders import Autoencoder, IdentityAutoencoder, build_autoencoder


def _class_name(path: Path) -> str:
    try:
        return str(json.loads((path / "config.json").read_text()).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def load_autoencoder(path: Union[str, Path], weights: str = "ema") -> Autoencoder:
    """``"identity"``; a directory written by ``moviola export`` of a train-vae run (a CausalVAE, or a
    frame VAE in diffusers' format); any diffusers AutoencoderKL directory (an SD VAE); a train-vae
    run or checkpoint directory (its ``weights``, EMA by default); or the autoencoder a diffusion
    checkpoint was trained with."""
    if str(path) == "identity":
        return IdentityAutoencoder()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"autoencoder path does not exist: {p}")
    from moviola.io.checkpoint import check_kind

    check_kind(p, ("autoencoder", "autoencoder_run", "diffusion", "diffusers_pipeline"), "an autoencoder")
    kind = _class_name(p)
    if kind == "CausalVAE":
        from moviola.autoencoders.causal_vae import CausalVAE

        return CausalVAE.from_pretrained(p)
    if kind == "TemporalDecoderVAE":
        from moviola.autoencoders.temporal_decoder import TemporalDecoderVAE

        return TemporalDecoderVAE.from_pretrained(p)
    from moviola.io.checkpoint import CheckpointError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(p)
    except CheckpointError:
        ckpt = None
    if ckpt is not None:
        from moviola.config import config_from_json
        from moviola.io.checkpoint import check_state_dict, load_weights, weights_name

        cfg = config_from_json(ckpt / "config.json")
        ae = build_autoencoder(cfg.autoencoder)
        if cfg.train.task == "autoencoder":  # the autoencoder is what this run trained: its weights are the checkpoint's
            name = weights_name(ckpt, weights)
            sd = load_weights(ckpt, name)
            check_state_dict(ae, sd, f"{ckpt}/{name}.safetensors")
            ae.load_state_dict(sd)
        return ae.eval()
    from moviola.autoencoders.frame_vae import FrameVAE

    return FrameVAE.from_pretrained(p)
