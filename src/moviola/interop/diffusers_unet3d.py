"""A diffusers ``UNet3DConditionModel`` (ModelScope T2V, zeroscope) -> a moviola VideoCrafter checkpoint:
``moviola convert diffusers-unet3d DIR OUT``.

ModelScope's U-Net is VideoCrafter2's layout: Stable Diffusion's U-Net, a 4-layer temporal convolution after
every resnet (mid block included), a temporal transformer (self-attention twice, no positions) after every
spatial transformer, and one after conv_in (``transformer_in``). moviola's VideoCrafter carries diffusers'
parameter names, so the weights move as they are, under ``unet.``; the config becomes a ``model.family:
videocrafter`` section and the cross-attention width ``conditions.text_channels``.

What the config means in diffusers (0.42.1), and what it becomes:

- ``attention_head_dim`` is, in the 3-D U-Net, the channels per head (its blocks pass it in the place of
  the heads, unlike the 2-D U-Net's): level i has ``block_out_channels[i] // attention_head_dim`` heads,
  spatial and temporal alike -> ``head_channels``. ``transformer_in`` has 8 heads of ``attention_head_dim``
  channels, wider than conv_in's output (8·64 = 512 on 320 channels) -> ``input_attention_heads: 8``,
  ``input_attention_head_channels``.
- Every projection is linear (the 3-D blocks' default) -> ``use_linear_projection: true``; one transformer
  block per transformer -> ``transformer_layers: 1``; ``norm_num_groups`` everywhere, temporal layers too.
- The text mask: diffusers' 3-D U-Net ignores ``attention_mask``; the converted model masks padding tokens
  when given ``text_mask`` (with every token real, or none given, the two agree).

Keys that would change what diffusers builds into something VideoCrafter does not have are refused by name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from moviola.config import ConfigError, load_config
from moviola.interop.common import read_diffusers_config, read_diffusers_weights, write_checkpoint_dir
from moviola.interop.diffusers_unet import unet_run_tree
from moviola.io.checkpoint import CheckpointError

# diffusers 0.42.1's UNet3DConditionModel config keys
_MAPPED = ("in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
           "layers_per_block", "norm_num_groups", "cross_attention_dim", "attention_head_dim")
_IGNORED = ("sample_size",)  # read for data.size only
# keys VideoCrafter implements at these values only (diffusers itself raises for num_attention_heads)
_ONLY: dict[str, tuple] = {"downsample_padding": (1,), "mid_block_scale_factor": (1,), "act_fn": ("silu", "swish"),
                           "norm_eps": (1e-5,), "num_attention_heads": (None,), "time_cond_proj_dim": (None,)}
# diffusers' defaults, for keys a config.json leaves out
_DEFAULTS: dict[str, Any] = {
    "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "norm_num_groups": 32, "cross_attention_dim": 1024, "attention_head_dim": 64}
_DOWN = {"CrossAttnDownBlock3D": True, "DownBlock3D": False}  # block type -> has spatial transformers
_UP = {"CrossAttnUpBlock3D": True, "UpBlock3D": False}


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _allowed(value: Any, allowed: tuple) -> bool:
    if value is None or None in allowed:
        return value is None and None in allowed
    return not isinstance(value, bool) and value in allowed


def unet3d_model_section(config: dict) -> tuple[dict, int]:
    """The ``model:`` section (family videocrafter) of a UNet3DConditionModel config, and its cross-attention
    width. Raises CheckpointError naming each key VideoCrafter cannot express."""
    refused = [f"{k}={v!r} (supported: {' or '.join(map(repr, _ONLY[k]))})" for k, v in config.items()
               if k in _ONLY and not _allowed(v, _ONLY[k])]
    refused += [f"{k} (unknown key)" for k in config
                if not k.startswith("_") and k not in _MAPPED and k not in _IGNORED and k not in _ONLY]
    c = {**_DEFAULTS, **{k: config[k] for k in _MAPPED if k in config}}
    channels, down, up = list(c["block_out_channels"]), list(c["down_block_types"]), list(c["up_block_types"])
    bad_types = [t for t in down if t not in _DOWN] + [t for t in up if t not in _UP]
    if bad_types:
        refused.append(f"block types {bad_types} (supported: {sorted(_DOWN)} down, {sorted(_UP)} up)")
    elif len(down) != len(channels) or len(up) != len(channels):
        refused.append(f"down_block_types / up_block_types: {len(down)} and {len(up)} blocks for "
                       f"{len(channels)} block_out_channels")
    elif [_DOWN[t] for t in down] != [_UP[t] for t in reversed(up)]:
        refused.append(f"up_block_types {up} do not mirror down_block_types {down} (VideoCrafter's U-Net has "
                       "spatial transformers at the same levels going down and up)")
    head = c["attention_head_dim"]
    if not _int(head):
        refused.append(f"attention_head_dim={head!r} (one channel count per head for every level; diffusers' "
                       "transformer_in needs one too)")
    for key in ("layers_per_block", "norm_num_groups", "cross_attention_dim", "in_channels", "out_channels"):
        if not _int(c[key]):
            refused.append(f"{key}={c[key]!r} (one positive int)")
    if refused:
        raise CheckpointError(f"this UNet3DConditionModel cannot be converted: {', '.join(refused)}")
    uneven = [ch for ch in channels if ch % head]
    if uneven:
        raise CheckpointError(f"this UNet3DConditionModel cannot be converted: attention_head_dim={head} does not "
                              f"divide block_out_channels {uneven} (heads of unequal width)")
    in_ch, out_ch = c["in_channels"], c["out_channels"]
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"out_channels={out_ch} is neither in_channels={in_ch} nor twice it")
    section = {"family": "videocrafter", "block_out_channels": channels, "layers_per_block": c["layers_per_block"],
               "attention_resolutions": [2 ** i for i, t in enumerate(down) if _DOWN[t]], "head_channels": head,
               "norm_num_groups": c["norm_num_groups"], "use_linear_projection": True, "transformer_layers": 1,
               "learned_sigma": out_ch == 2 * in_ch, "temporal_conv": True, "relative_position": False,
               "causal_attention": False, "temporal_self_attention_only": True, "addition_attention": True,
               "input_attention_heads": 8, "input_attention_head_channels": head}
    return section, c["cross_attention_dim"]


def import_diffusers_unet3d(src: Union[str, Path], out_dir: Union[str, Path], vae: Optional[Union[str, Path]] = None,
                            text_encoder: Optional[Union[str, Path]] = None) -> Path:
    """``moviola convert diffusers-unet3d SRC OUT``: the U-Net (a ``unet/`` directory or a pipeline root) -> a
    videocrafter checkpoint directory whose ``load_model`` gives diffusers' output on ``(B, C, T, H, W)``.

    ``vae`` and ``text_encoder`` default to ``vae/`` and ``text_encoder/`` beside ``unet/``; the schedule is
    read from ``scheduler/scheduler_config.json`` there when present (SD's scaled-linear ε schedule otherwise).
    """
    src, config = read_diffusers_config(Path(src), "UNet3DConditionModel", "unet")
    root = src.parent if src.name == "unet" else src
    section, text_width = unet3d_model_section(config)
    tree = unet_run_tree(root, config, section, text_width, vae, text_encoder, default_size=32, cfg_scale=9.0)
    try:
        cfg = load_config(data=tree)
    except ConfigError as e:
        raise CheckpointError(f"this UNet3DConditionModel cannot be converted: {e}") from e
    sd = {f"unet.{k}": v for k, v in read_diffusers_weights(src).items()}
    return write_checkpoint_dir(out_dir, cfg, sd)
