"""The official Latte checkpoints (``maxin-cn/Latte``: ffs.pt, skytimelapse.pt, taichi-hd.pt,
ucf101.pt and the S/B/L sizes) -> a moviola checkpoint directory.

The official model is DiT's code with the blocks walked in pairs: ``blocks.{2k}`` is spatial block
k, ``blocks.{2k+1}`` temporal block k. Every other name (fused ``attn.qkv``, ``mlp.fc1``,
``adaLN_modulation.1``, ``final_layer.*``, the embedders) is already moviola's. ``pos_embed`` and
``temp_embed`` are fixed sin-cos tables stored as frozen parameters; moviola computes them for
each input, so they are checked against the recomputed tables (positions are ``[sin, cos]``)
and dropped. Learned sigma: the official output is (B, F, 2C, H, W), split on the channel axis
into ε and the variance value, the same channel order as moviola's (B, 2C, T, H, W).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional, Union

import torch

from moviola.config import LATTE_SIZES, AutoencoderConfig, RunConfig, autoencoder_latent_channels, autoencoder_spatial_factor, \
    load_config
from moviola.interop.common import model_on_meta, named_size, write_checkpoint_dir
from moviola.nn import sincos_2d, sincos_temporal
from moviola.io.checkpoint import CheckpointError, load_foreign_state_dict

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DIRECT = re.compile(r"^(x_embedder\.proj|t_embedder\.mlp\.[02]|y_embedder\.embedding_table|"
                     r"final_layer\.(linear|adaLN_modulation\.1))\.(weight|bias)$")


def _listing(keys: list[str]) -> str:
    return ", ".join(keys[:12]) + (f" … ({len(keys)} in all)" if len(keys) > 12 else "")


def official_to_moviola(sd: dict[str, torch.Tensor], num_heads: Optional[int] = None
                        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Model-config fields and the renamed state dict of an official Latte (class / unconditional).

    ``num_heads`` is not recorded in the weights; it is taken from the named size of this width
    (S 6, B 12, L 16, XL 16) unless given. Unknown or missing keys raise a CheckpointError listing them.
    """
    unknown = [k for k in sd if not (_DIRECT.match(k) or _BLOCK.match(k) or k in ("pos_embed", "temp_embed"))]
    if unknown:
        raise CheckpointError(f"not an official Latte (class/unconditional) state dict: unknown keys {_listing(unknown)}")
    for key in ("x_embedder.proj.weight", "final_layer.linear.weight", "pos_embed", "temp_embed"):
        if key not in sd:
            raise CheckpointError(f"official Latte state dict without {key!r}: missing keys [{key}]")
    D, in_ch, p, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK.match(k))), default=-1)
    out_ch, rem = divmod(sd["final_layer.linear.weight"].shape[0], p * p)
    if rem or out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"final_layer.linear has {sd['final_layer.linear.weight'].shape[0]} outputs: "
                              f"expected p²·C or p²·2C for p={p}, C={in_ch}")
    mlp_key = "blocks.0.mlp.fc1.weight"
    mlp_ratio = sd[mlp_key].shape[0] / D if mlp_key in sd else 4.0
    size = named_size(D)
    if num_heads is None:
        if size is None:
            raise CheckpointError(f"width {D} is not a named Latte size: give the head count (--num-heads)")
        num_heads = LATTE_SIZES[size]["num_heads"]
    table = sd.get("y_embedder.embedding_table.weight")
    model = dict(family="latte", size=size or "tiny", patch_size=p, hidden_size=D, depth=depth, num_heads=num_heads,
                 mlp_ratio=mlp_ratio, learned_sigma=out_ch == 2 * in_ch)
    conditions = dict(num_classes=0 if table is None else table.shape[0] - 1)

    pos, temp = sd["pos_embed"], sd["temp_embed"]  # (1, N, D), (1, F, D)
    side = math.isqrt(pos.shape[1])
    if side * side != pos.shape[1]:
        raise CheckpointError(f"pos_embed has {pos.shape[1]} tokens, not a square grid")
    if not pos.is_meta:  # the stored tables must be the sin-cos moviola recomputes, or outputs would differ
        for name, stored, ours in (("pos_embed", pos[0], sincos_2d(side, side, D)),
                                   ("temp_embed", temp[0], sincos_temporal(temp.shape[1], D))):
            err = (stored.float() - ours).abs().max().item()
            if err > 1e-4:
                raise CheckpointError(f"{name} differs from the sin-cos table by {err:.3g}: a learned or "
                                      "reordered embedding, which moviola does not store")

    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in ("pos_embed", "temp_embed"):
            continue
        m = _BLOCK.match(k)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            k = f"{'temporal' if i % 2 else 'spatial'}_blocks.{i // 2}.{rest}"
        out[k] = v
    shape = dict(latent_size=side * p, frames=temp.shape[1], in_channels=in_ch)
    return {"model": model, "conditions": conditions, "shape": shape}, out


def _check_against_model(cfg: RunConfig, sd: dict[str, torch.Tensor], in_channels: int) -> None:
    expected = model_on_meta(cfg, in_channels).state_dict()

    def official(k: str) -> str:  # moviola name -> official name, for messages
        m = re.match(r"^(spatial|temporal)_blocks\.(\d+)\.(.+)$", k)
        return f"blocks.{2 * int(m.group(2)) + (m.group(1) == 'temporal')}.{m.group(3)}" if m else k

    missing = sorted(official(k) for k in set(expected) - set(sd))
    extra = sorted(official(k) for k in set(sd) - set(expected))
    if missing or extra:
        raise CheckpointError(f"the official state dict does not fit Latte-{cfg.model.size}/{cfg.model.patch_size}: "
                              f"missing keys [{_listing(missing)}], unknown keys [{_listing(extra)}]")
    bad = [f"{official(k)} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
           for k, v in sd.items() if v.shape != expected[k].shape]
    if bad:
        raise CheckpointError(f"tensors with the wrong shape: {_listing(bad)}")


def paper_run_config(name: str, model: dict, conditions: dict, shape: dict, vae: Union[str, Path],
                     base_config: Optional[Union[str, Path]] = None) -> RunConfig:
    """The run config of a converted official model: the paper's diffusion (linear betas, 1000
    steps, ε with learned sigma) and sampling (DDPM, 250 steps), 256 px, frame stride 3, unless
    ``base_config`` (e.g. configs/latte/ffs.yaml) gives the non-model sections."""
    factor = autoencoder_spatial_factor(AutoencoderConfig(kind="frame_vae", path=str(vae)))
    tree = {"name": name, "model": model, "conditions": conditions,
            "autoencoder": {"kind": "frame_vae", "path": str(vae)}}
    if base_config is None:
        tree.update(
            data={"dataset": "folder", "root": f"data/{name}", "size": shape["latent_size"] * factor,
                  "frames": shape["frames"], "frame_stride": 3},
            diffusion={"schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                       "prediction": "eps"},
            sample={"sampler": "ddpm", "steps": 250, "cfg": 7.0 if conditions["num_classes"] else 1.0})
    cfg = load_config(base_config, data=tree)
    if cfg.data.size != shape["latent_size"] * factor or cfg.data.frames != shape["frames"]:
        raise CheckpointError(f"{base_config}: data.size={cfg.data.size}, data.frames={cfg.data.frames} do not match "
                              f"the checkpoint ({shape['latent_size'] * factor} px, {shape['frames']} frames)")
    return cfg


def convert_official(src: Union[str, Path], out_dir: Union[str, Path], vae: Union[str, Path],
                     num_heads: Optional[int] = None, base_config: Optional[Union[str, Path]] = None) -> Path:
    """``moviola convert latte-official SRC OUT --vae DIR``: an official ``.pt`` -> a checkpoint directory.

    ``{"ema", "model"}`` wrappers are unwrapped preferring ``ema``; the file is read with
    ``torch.load(weights_only=True)``. ``vae`` is the frame VAE the model was trained with (the
    ``vae/`` folder of the same release); only its config.json is read here.
    """
    sd = load_foreign_state_dict(src)
    info, out = official_to_moviola(sd, num_heads)
    cfg = paper_run_config(Path(src).stem, info["model"], info["conditions"], info["shape"], vae, base_config)
    channels = autoencoder_latent_channels(cfg.autoencoder)
    if channels != info["shape"]["in_channels"]:
        raise CheckpointError(f"the VAE at {vae} has {channels} latent channels, the checkpoint "
                              f"{info['shape']['in_channels']}")
    _check_against_model(cfg, out, channels)
    return write_checkpoint_dir(out_dir, cfg, out)
