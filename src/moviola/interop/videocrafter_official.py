"""Official VideoCrafter checkpoints (``AILab-CVC/VideoCrafter``: VideoCrafter1 T2V 512 / 1024 and I2V 512,
VideoCrafter2 T2V) -> a moviola ``videocrafter`` checkpoint directory:
``moviola convert videocrafter CKPT OUT --vae DIR [--config YAML] [--text-encoder DIR]``.

The official network is ``lvdm``'s ``UNetModel`` (``lvdm/modules/networks/openaimodel3d.py``), stored under
``model.diffusion_model.`` in a Lightning ``state_dict`` (or bare). Its blocks are ``TimestepEmbedSequential``
lists whose ORDER is what places each module on moviola's U-Net (nn/unet.py, diffusers' names)::

    input_blocks.0.0                          conv_in                 -> unet.conv_in
    init_attn.0   (addition_attention)        TemporalTransformer     -> unet.transformer_in
    input_blocks.i: [ResBlock, SpatialTransformer, TemporalTransformer] (the two at attention levels)
                                              -> down_blocks.l.{resnets, attentions, temp_attentions}.r
                    ResBlock.temopral_conv (temporal_conv, sic)        -> down_blocks.l.temp_convs.r
    input_blocks.i: [Downsample] (.0.op)      -> down_blocks.l.downsamplers.0.conv
    middle_block: [ResBlock, SpatialTransformer, TemporalTransformer, ResBlock]
                                              -> mid_block.{resnets.0, attentions.0, temp_attentions.0, resnets.1}
    output_blocks.i: [ResBlock, (Spatial, Temporal), (Upsample .conv)] -> up_blocks.u.{...}, upsamplers.0.conv
    time_embed.0/2 -> unet.time_embedding.linear_1/2   fps_embedding.0/2 -> fps_embedding.linear_1/2
    out.0/2 -> unet.conv_norm_out / unet.conv_out
    image_proj_model.* (I2V, beside model.diffusion_model) -> image_proj_model.*

Inside a ResBlock: ``in_layers.0/2`` -> ``norm1/conv1``, ``emb_layers.1`` -> ``time_emb_proj``, ``out_layers.0/3``
-> ``norm2/conv2``, ``skip_connection`` -> ``conv_shortcut``. Transformers keep their leaf names (``norm``,
``proj_in``, ``transformer_blocks.k.{norm1..3, attn1/attn2.{to_q,to_k,to_v,to_out.0}, ff.net.0.proj, ff.net.2}``,
``proj_out``, ``attnN.relative_position_{k,v}.embeddings_table``); the temporal convolution keeps its Sequential
indices (``conv1.0/2``, ``conv2..4.0/3``). Every official tensor lands in exactly one moviola tensor: the table
(``module_table``) is inverted over the model the config builds, so a key it does not produce is unknown and a
moviola key it does not fill is missing, both listed by their official names.

What the official code computes, and how moviola's model matches it (checked against an independent
re-implementation in tests/test_convert_videocrafter.py):

- ResBlock: time embedding added after the first conv (diffusers' ResnetBlock2D, ``default`` shift);
  ``use_scale_shift_norm`` (FiLM) is refused. GroupNorm32 computes in float32 and casts back: the same in float32.
  The temporal convolution runs inside the ResBlock after its residual sum: where moviola's ``temp_convs`` slot is.
- TemporalConvBlock: four GroupNorm(32)-SiLU-[Dropout]-Conv3d (3,1,1) with zero time padding and statistics over
  the clip, plus the input (moviola's TemporalConvLayer). Its dropout is 0.1 in the official code (training
  only; moviola's is 0). ``tempspatial_aware`` (3×3×3 kernels) is refused.
- TemporalTransformer: GroupNorm(32, eps 1e-6) over (b, c, t, h, w), tokens ``(b h w) t c``, proj_in, blocks,
  proj_out, + input. With ``use_linear=false`` its projections are Conv1d of kernel 1 (weights (out, in, 1)),
  squeezed onto moviola's Linear. ``init_attn`` is built WITHOUT ``use_linear`` in the official code, so its
  projections are always Conv1d; it has 8 heads of ``num_head_channels`` (input_attention_heads 8).
- Relative positions (VC1): Shaw tables on attn1 and attn2 (both self-attention), offset j − i clipped at
  ± temporal_length: moviola's RelativePosition. With ``temporal_selfatt_only=false`` the official attn2 would add
  them over TEXT tokens: refused.
- Causal mask: the official mask is temporal_length × temporal_length (it runs only at T = temporal_length), and it
  is applied in both self-attentions; moviola's is T × T (the same where the official runs). With
  ``temporal_selfatt_only=false`` the official blocks are called without the mask: converted as not causal.
- Cross-attending temporal transformers (``temporal_selfatt_only=false``): every pixel's frames attend to the
  clip's text (the official repeats the per-frame text over pixels, which is the clip's text for each).
- Timestep and fps features: lvdm's ``timestep_embedding`` is [cos, sin] with frequencies exp(-ln(10⁴)·i/half):
  diffusers' ``flip_sin_to_cos=True, freq_shift=0``, moviola's default; fps goes through the same features into
  ``fps_embedding`` and is added to the time embedding before the per-frame repeat (moviola: the same sum).
- Skips: ``torch.cat([h, skip])`` in that order, the skip after conv_in taken after ``init_attn``; upsampling is
  nearest ×2 then conv (moviola: to the skip's size, the same for the sizes the official accepts).
- Heads: spatial and temporal transformers at a level have ``ch // num_head_channels`` heads; a head width
  that does not divide a level's channels (a transformer narrower than its level) is refused.

Not in the U-Net, and so not converted: ``first_stage_model.*`` (the SD VAE: give its diffusers directory with
``--vae``), ``cond_stage_model.*`` (OpenCLIP ViT-H-14; ``--text-encoder`` sets a transformers CLIP text
encoder, penultimate layer, 77 tokens), the schedule buffers (read: betas -> the diffusion section),
``model_ema.*``. ``use_scale`` (VC2, VC1-1024: x0 scaled by ``scale_arr[t]`` in q_sample and the DDIM step) becomes
``diffusion.x0_scale``, and the official DDIM's timesteps (offset 1, ending on alphas_cumprod[0]) its
``steps_offset``/``final_alpha``: moviola's DDIM then takes the official steps.

Image-to-video (VC1 I2V 512, ``use_image_attention``, ``finegrained``): every spatial ``attn2`` also has
``to_k_ip``/``to_v_ip`` (same names in moviola's dual cross-attention, the query shared, scale 1.0) and
``image_proj_model.*`` (the Perceiver Resampler, 64-channel heads as ``init_projector`` hard-codes) maps name for
name onto the family's image branch (``model.image_encoder: tokens``). The official code concatenates
``[text (77 tokens); image tokens]`` and splits at 77; moviola takes the text and ``Conditioning.image_tokens``
(the OpenCLIP ViT-H-14 image tokens; ``embedder.*`` is not converted) apart: the same function. Differences:
the null image (official: the resampled tokens of a black image; moviola: all-zero tokens, no contribution),
and ``ImageProjModel`` (``finegrained=false``), which is refused.
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch

from moviola.config import (AutoencoderConfig, ConditionsConfig, ConfigError, autoencoder_latent_channels,
                            autoencoder_spatial_factor, load_config)
from moviola.config.models import model_config_from_dict
from moviola.interop.common import write_checkpoint_dir
from moviola.io.checkpoint import CheckpointError, load_foreign_state_dict

UNET_PREFIX = "model.diffusion_model."
# LatentDiffusion's registered schedule buffers (ddpm3d.py: register_schedule, use_scale, scale_by_std)
SCHEDULE_BUFFERS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "scale_arr", "scale_factor", "logvar", "lvlb_weights"})
# the rest of a LatentDiffusion: what it is, and why it is not converted
OTHER_PARTS = {
    "first_stage_model.": "the VAE (the SD VAE: give its diffusers directory with --vae)",
    "cond_stage_model.": "the OpenCLIP text encoder (give a transformers CLIP text encoder with --text-encoder)",
    "model_ema.": "the training EMA copy (LitEma); the model weights are converted",
    "embedder.": "the image-to-video OpenCLIP image encoder",
    "image_proj_model.": "the image-to-video resampler (image tokens)",
}
_RESNET_LEAVES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                  "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESNET_LEAVES_BACK = {v: k for k, v in _RESNET_LEAVES.items()}

# UNetModel.__init__'s defaults (openaimodel3d.py); in_channels, model_channels, out_channels, num_res_blocks and
# attention_resolutions have none
UNET_DEFAULTS: dict[str, Any] = dict(
    dropout=0.0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2, context_dim=None,
    use_scale_shift_norm=False, resblock_updown=False, num_heads=-1, num_head_channels=-1, transformer_depth=1,
    use_linear=False, use_checkpoint=False, temporal_conv=False, tempspatial_aware=False, temporal_attention=True,
    temporal_selfatt_only=True, use_relative_position=True, use_causal_attention=False, temporal_length=None,
    use_fp16=False, addition_attention=False, use_image_attention=False, temporal_transformer_depth=1,
    fps_cond=False)
UNET_REQUIRED = ("in_channels", "model_channels", "out_channels", "num_res_blocks", "attention_resolutions")


def _listing(keys: list[str], n: int = 8) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" … ({len(keys)} in all)" if len(keys) > n else f" ({len(keys)})")


# ---------------------------------------------------------------- splitting a LatentDiffusion state dict
def _refuse_other_formats(sd: dict[str, torch.Tensor]) -> None:
    """A checkpoint of another kind that moviola converts elsewhere is named, not listed key by key."""
    keys = set(sd)
    if {"x_embedder.proj.weight", "t_embedder.mlp.0.weight"} <= keys or any(k.startswith("blocks.0.attn.qkv")
                                                                             for k in keys):
        raise CheckpointError("this is an official Latte checkpoint (x_embedder, t_embedder, blocks.N.attn.qkv), "
                              "not a VideoCrafter one: use `moviola convert latte-official`")
    if "pos_embed.proj.weight" in keys and any(k.startswith("transformer_blocks.") for k in keys):
        raise CheckpointError("this is a diffusers Latte transformer, not a VideoCrafter checkpoint: use "
                              "`moviola convert diffusers-latte`")
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        raise CheckpointError("this is a diffusers U-Net (conv_in, down_blocks), not an official lvdm one: use "
                              "`moviola convert diffusers-unet3d` (ModelScope layout) or `diffusers-unet`")
    if "unet.conv_in.weight" in keys:
        raise CheckpointError("this is a moviola checkpoint already (unet.conv_in): load it with moviola.load_model")


def split_checkpoint(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict[str, list[str]]]:
    """-> (the U-Net's tensors under their official names, the schedule buffers, {other part: its keys}).
    A Lightning ``LatentDiffusion`` state dict or a bare ``UNetModel`` one; anything else is refused naming the
    unknown keys."""
    _refuse_other_formats(sd)
    if any(k.startswith(UNET_PREFIX) for k in sd):
        unet = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
        rest = {k: v for k, v in sd.items() if not k.startswith(UNET_PREFIX)}
    else:  # bare: the U-Net's own names, plus possibly nothing else
        unet_like = re.compile(r"^(input_blocks|middle_block|output_blocks|time_embed|fps_embedding|init_attn|out)\.")
        unet = {k: v for k, v in sd.items() if unet_like.match(k)}
        rest = {k: v for k, v in sd.items() if k not in unet}
        if not unet:
            raise CheckpointError(f"not an official VideoCrafter checkpoint: no {UNET_PREFIX}* (Lightning) nor "
                                  f"input_blocks.* (bare U-Net) keys; unknown keys {_listing(sorted(sd))}")
    buffers = {k: v for k, v in rest.items() if k in SCHEDULE_BUFFERS}
    others: dict[str, list[str]] = {}
    unknown = []
    for k in rest:
        if k in buffers:
            continue
        part = next((p for p in OTHER_PARTS if k.startswith(p)), None)
        if part is None:
            unknown.append(k)
        else:
            others.setdefault(part, []).append(k)
    if unknown:
        raise CheckpointError(f"not an official VideoCrafter checkpoint: unknown keys {_listing(sorted(unknown))} "
                              f"(expected {UNET_PREFIX}*, {', '.join(p + '*' for p in OTHER_PARTS)} and schedule "
                              "buffers)")
    return unet, buffers, others


# ---------------------------------------------------------------- what the tensors say
def _require(unet: dict, *keys: str) -> None:
    missing = [k for k in keys if k not in unet]
    if missing:
        raise CheckpointError(f"the official U-Net state dict is incomplete: missing keys {_listing(missing)}")


def _depth(unet: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.transformer_blocks\.(\d+)\.")
    return 1 + max((int(m.group(1)) for k in unet if (m := pattern.match(k))), default=-1)


def infer_unet_params(unet: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``UNetModel`` arguments the tensor shapes determine (official names), and hints for the rest
    (``d_head_init``: init_attn's head width, ``d_head_mid``: the mid relative tables' width; ``selfatt``: what
    the temporal attn2 widths say, None if ambiguous). Layouts the shapes show moviola cannot express are refused
    here by name."""
    _require(unet, "input_blocks.0.0.weight", "time_embed.0.weight", "out.2.weight",
             "middle_block.0.in_layers.2.weight")
    conv_in = unet["input_blocks.0.0.weight"]
    if conv_in.dim() != 4:
        raise CheckpointError(f"input_blocks.0.0.weight has shape {tuple(conv_in.shape)}: dims={conv_in.dim() - 2} "
                              "convolutions (moviola's U-Net is 2-D, dims=2)")
    C0, in_ch = conv_in.shape[:2]
    p: dict[str, Any] = {"in_channels": int(in_ch), "model_channels": int(C0),
                         "out_channels": int(unet["out.2.weight"].shape[0]), "dims": 2}

    # walk input_blocks: a ResBlock (.0.in_layers) or a Downsample (.0.op)
    present = sorted({int(m.group(1)) for k in unet if (m := re.match(r"^input_blocks\.(\d+)\.", k))})
    levels: list[list[int]] = [[]]
    idx = 1
    while True:
        if f"input_blocks.{idx}.0.op.weight" in unet:
            levels.append([])
        elif f"input_blocks.{idx}.0.in_layers.2.weight" in unet:
            levels[-1].append(idx)
        else:
            break
        idx += 1
    beyond = [i for i in present if i >= idx]
    if beyond:
        raise CheckpointError(f"input_blocks.{idx} is neither a ResBlock nor a convolutional Downsample (.0.op) but "
                              f"input_blocks.{beyond[0]} follows: a parameter-free downsampler (conv_resample=false) "
                              "or resblock_updown=true, which moviola's U-Net does not have")
    counts = {len(level) for level in levels}
    if len(counts) != 1 or 0 in counts:
        raise CheckpointError(f"input_blocks hold {[len(level) for level in levels]} ResBlocks per level: moviola's "
                              "U-Net has num_res_blocks ResBlocks at every level")
    p["num_res_blocks"] = counts.pop()
    mult, attention = [], []
    for level, blocks in enumerate(levels):
        outs = {int(unet[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]) for i in blocks}
        if len(outs) != 1 or next(iter(outs)) % C0:
            raise CheckpointError(f"the ResBlocks of level {level} ({[f'input_blocks.{i}' for i in blocks]}) have "
                                  f"{sorted(outs)} output channels: not one multiple of model_channels={C0}")
        mult.append(next(iter(outs)) // int(C0))
        if f"input_blocks.{blocks[0]}.1.proj_in.weight" in unet:
            attention.append(2 ** level)
    p["channel_mult"], p["attention_resolutions"] = tuple(mult), tuple(attention)

    res = "middle_block.0"
    emb_rows, out_ch = unet[f"{res}.emb_layers.1.weight"].shape[0], unet[f"{res}.in_layers.2.weight"].shape[0]
    p["use_scale_shift_norm"] = bool(emb_rows == 2 * out_ch)
    p["resblock_updown"] = any(re.match(r"^output_blocks\.\d+\.[1-9]\d*\.emb_layers\.", k) for k in unet)
    temporal_conv = f"{res}.temopral_conv.conv1.2.weight"
    p["temporal_conv"] = temporal_conv in unet
    p["tempspatial_aware"] = p["temporal_conv"] and tuple(unet[temporal_conv].shape[-2:]) != (1, 1)

    _require(unet, "middle_block.1.proj_in.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight")
    p["use_linear"] = unet["middle_block.1.proj_in.weight"].dim() == 2
    p["context_dim"] = int(unet["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1])
    p["transformer_depth"] = _depth(unet, "middle_block.1")
    p["use_image_attention"] = any(k.endswith(("attn2.to_k_ip.weight", "attn2.to_v_ip.weight")) for k in unet)
    p["temporal_attention"] = "middle_block.2.proj_in.weight" in unet
    p["addition_attention"] = "init_attn.0.proj_in.weight" in unet
    p["fps_cond"] = "fps_embedding.0.weight" in unet
    hints: dict[str, Any] = {"d_head_init": None, "d_head_mid": None, "selfatt": None}
    if p["addition_attention"]:
        inner = int(unet["init_attn.0.proj_in.weight"].shape[0])
        if inner % 8:
            raise CheckpointError(f"init_attn.0.proj_in has {inner} outputs: not the official 8 heads")
        hints["d_head_init"] = inner // 8
    if not p["temporal_attention"]:
        return p, hints
    p["temporal_transformer_depth"] = _depth(unet, "middle_block.2")
    table = "middle_block.2.transformer_blocks.0.attn1.relative_position_k.embeddings_table"
    p["use_relative_position"] = table in unet
    if p["use_relative_position"]:
        rows, width = unet[table].shape
        p["temporal_length"] = (int(rows) - 1) // 2
        hints["d_head_mid"] = int(width)
    # the temporal attn2: self-attention (keys from the inner width) or cross-attention (from context_dim)
    for name in ("middle_block.2", "init_attn.0"):
        key = f"{name}.transformer_blocks.0.attn2.to_k.weight"
        if key in unet and f"{name}.proj_in.weight" in unet:
            inner, source = int(unet[f"{name}.proj_in.weight"].shape[0]), int(unet[key].shape[1])
            if inner != p["context_dim"] or source != inner:
                hints["selfatt"] = source == inner and source != p["context_dim"]
                break
    return p, hints


OFFICIAL_RESAMPLER_HEAD = 64  # LatentVisualDiffusion.init_projector: Resampler(dim_head=64, heads=12, ff_mult=4)


def infer_image_params(proj: dict[str, torch.Tensor], image_attention: bool) -> Optional[dict[str, Any]]:
    """The image branch's model keys from ``image_proj_model.*`` (the finegrained Resampler), or None for a
    text-to-video U-Net; what moviola's image branch cannot be is refused by name."""
    if not image_attention and not proj:
        return None
    if not image_attention:
        raise CheckpointError(f"image_proj_model.* ({len(proj)} tensors) without image cross-attention "
                              "(attn2.to_k_ip/to_v_ip) in the U-Net: not a VideoCrafter checkpoint moviola knows")
    if not proj:
        raise CheckpointError("the U-Net cross-attends to image tokens (attn2.to_k_ip/to_v_ip) but the file has no "
                              "image_proj_model.* (the resampler): convert the whole Lightning checkpoint")
    if "image_proj_model.proj.weight" in proj:
        raise CheckpointError("image_proj_model is an ImageProjModel (finegrained=false: 4 tokens from a global CLIP "
                              "embedding): moviola's image branch is the Resampler (finegrained=true) only")
    need = ["image_proj_model.latents", "image_proj_model.proj_in.weight", "image_proj_model.layers.0.0.to_q.weight"]
    missing = [k for k in need if k not in proj]
    if missing:
        raise CheckpointError(f"image_proj_model is not the official Resampler: missing keys {_listing(missing)}")
    _, queries, dim = proj["image_proj_model.latents"].shape
    inner = int(proj["image_proj_model.layers.0.0.to_q.weight"].shape[0])
    if inner % OFFICIAL_RESAMPLER_HEAD:
        raise CheckpointError(f"image_proj_model's attention is {inner} wide: not heads of the official "
                              f"{OFFICIAL_RESAMPLER_HEAD} channels")
    depth = 1 + max(int(m.group(1)) for k in proj if (m := re.match(r"^image_proj_model\.layers\.(\d+)\.", k)))
    return {"image_encoder": "tokens", "image_token_dim": int(proj["image_proj_model.proj_in.weight"].shape[1]),
            "resampler_queries": int(queries), "resampler_depth": depth, "resampler_dim": int(dim),
            "resampler_heads": inner // OFFICIAL_RESAMPLER_HEAD, "resampler_head_channels": OFFICIAL_RESAMPLER_HEAD,
            "image_scale": 1.0, "image_scale_learnable": False}


# ---------------------------------------------------------------- the official YAML
def read_official_yaml(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model.params.unet_config.params, model.params)`` of an official inference config (yaml.safe_load)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--config {path}: file not found")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"--config {path} is not YAML: {str(e).splitlines()[0]}") from None
    params = (tree or {}).get("model", {}).get("params") if isinstance(tree, dict) else None
    unet = params.get("unet_config", {}).get("params") if isinstance(params, dict) else None
    if not isinstance(unet, dict):
        raise CheckpointError(f"--config {path} has no model.params.unet_config.params: expected an official "
                              "VideoCrafter inference config (configs/inference_t2v_512_v2.0.yaml)")
    target = str(params.get("unet_config", {}).get("target", ""))
    if target and not target.endswith("openaimodel3d.UNetModel"):
        raise CheckpointError(f"--config {path}: unet_config.target={target!r} is not lvdm's openaimodel3d.UNetModel")
    unknown = [k for k in unet if k not in UNET_DEFAULTS and k not in UNET_REQUIRED]
    if unknown:
        raise CheckpointError(f"--config {path}: unet_config.params {unknown} are not UNetModel arguments moviola "
                              "knows (VideoCrafter's openaimodel3d.py)")
    return dict(unet), dict(params)


def _norm(key: str, value: Any) -> Any:
    if key == "attention_resolutions":
        return tuple(sorted(int(v) for v in value))
    if isinstance(value, list):
        return tuple(value)
    return value


def merge_params(inferred: dict[str, Any], hints: dict[str, Any], yaml_unet: Optional[dict[str, Any]],
                 source: str = "--config") -> dict[str, Any]:
    """The UNetModel arguments: the YAML's (with UNetModel's defaults) checked against the weights, or the weights'
    alone. A YAML value that disagrees with the tensors, and what neither can tell, are errors naming the key."""
    if yaml_unet is None:
        p = {**UNET_DEFAULTS, **inferred}
        if not p["temporal_attention"]:
            return p
        if "temporal_length" not in inferred:
            p["temporal_length"] = 16  # unused without relative positions and causal mask (the official configs' 16)
        p["use_causal_attention"] = False  # not in the weights; UNetModel's default, every official config's value
        d_head = hints["d_head_init"] or hints["d_head_mid"]
        if d_head is None:
            raise CheckpointError("num_head_channels cannot be read from these weights (no init_attn, no relative "
                                  "position tables): give the official YAML with --config")
        p["num_head_channels"] = d_head
        if hints["selfatt"] is None:
            raise CheckpointError("temporal_selfatt_only cannot be read from these weights (the temporal attention "
                                  "is as wide as the text): give the official YAML with --config")
        p["temporal_selfatt_only"] = hints["selfatt"]
        return p
    missing = [k for k in UNET_REQUIRED if k not in yaml_unet]
    if missing:
        raise CheckpointError(f"{source}: unet_config.params lacks {missing}")
    p = {**UNET_DEFAULTS, **yaml_unet}
    wrong = []
    for key, value in inferred.items():
        if _norm(key, p[key]) != _norm(key, value):
            wrong.append(f"{key}={p[key]!r} in the YAML, {value!r} in the weights")
    if p["temporal_attention"] and inferred.get("temporal_attention"):
        if p["num_head_channels"] != -1:
            for hint in ("d_head_init", "d_head_mid"):
                if hints[hint] is not None and hints[hint] != p["num_head_channels"]:
                    what = "init_attn's heads" if hint == "d_head_init" else "the relative-position tables"
                    wrong.append(f"num_head_channels={p['num_head_channels']} in the YAML, {hints[hint]} in the "
                                 f"weights ({what})")
        elif hints["d_head_init"] is not None:
            wrong.append(f"num_head_channels=-1 in the YAML, {hints['d_head_init']} in the weights (init_attn)")
        if hints["selfatt"] is not None and bool(p["temporal_selfatt_only"]) != hints["selfatt"]:
            wrong.append(f"temporal_selfatt_only={p['temporal_selfatt_only']!r} in the YAML, {hints['selfatt']} in the "
                         "weights (the temporal attn2 key width)")
    if wrong:
        raise CheckpointError(f"{source} disagrees with the weights: {'; '.join(wrong)}")
    return p


def check_expressible(p: dict[str, Any]) -> list[str]:
    """Refuse (by name) what moviola's videocrafter family cannot compute as the official network does; return
    notes on what is converted differently but computes the same."""
    refused, notes = [], []
    fixed = dict(dims=2, conv_resample=True, resblock_updown=False, use_scale_shift_norm=False, tempspatial_aware=False,
                 temporal_attention=True)
    why = dict(dims="moviola's U-Net is 2-D", conv_resample="moviola downsamples with a stride-2 convolution",
               resblock_updown="moviola resamples with plain (down/up)sampling layers",
               use_scale_shift_norm="moviola's ResBlock adds the time embedding (no FiLM scale/shift)",
               tempspatial_aware="moviola's temporal convolution has (3, 1, 1) kernels",
               temporal_attention="moviola's videocrafter has a temporal transformer after every spatial one")
    for key, value in fixed.items():
        if p.get(key, value) != value:
            refused.append(f"{key}={p[key]!r} ({why[key]})")
    if p["use_image_attention"] and not p["temporal_selfatt_only"]:
        refused.append("use_image_attention with temporal_selfatt_only=false (the official temporal cross-attention "
                       "would attend to the image tokens too, moviola's to the text only)")
    if p["context_dim"] is None:
        refused.append("context_dim=None (a VideoCrafter U-Net cross-attends to text)")
    if p["in_channels"] != p["out_channels"]:
        refused.append(f"in_channels={p['in_channels']} with out_channels={p['out_channels']} (e.g. DynamiCrafter's "
                       "concatenated image latent; moviola's videocrafter predicts as many channels as it takes)")
    if p.get("temporal_transformer_depth", 1) != p["transformer_depth"]:
        refused.append(f"temporal_transformer_depth={p['temporal_transformer_depth']} with transformer_depth="
                       f"{p['transformer_depth']} (one transformer depth for every transformer)")
    if p["addition_attention"] and p["num_head_channels"] == -1:
        refused.append("addition_attention with num_head_channels=-1 (the official init_attn needs a head width)")
    channels = [m * p["model_channels"] for m in p["channel_mult"]]
    for c in channels:
        if c % 32:
            refused.append(f"{c} channels (the official GroupNorms have 32 groups)")
            break
    heads_key = "num_head_channels" if p["num_head_channels"] != -1 else "num_heads"
    width = p[heads_key]
    if not isinstance(width, int) or width < 1:
        refused.append(f"num_heads={p['num_heads']!r}, num_head_channels={p['num_head_channels']!r} (one of them a "
                       "positive int)")
    else:
        uneven = [c for c in channels if c % width]
        if uneven:
            refused.append(f"{heads_key}={width} does not divide {uneven} channels (the official transformer would "
                           "be narrower than its level; moviola's are as wide as their level)")
    if not p["temporal_selfatt_only"] and p["use_relative_position"]:
        refused.append("use_relative_position with temporal_selfatt_only=false (the official temporal cross-attention "
                       "adds relative positions over text tokens)")
    if refused:
        raise CheckpointError(f"this VideoCrafter U-Net cannot be converted: {'; '.join(refused)}")
    if p["use_causal_attention"] and not p["temporal_selfatt_only"]:
        notes.append("use_causal_attention=true is not applied by the official code when temporal_selfatt_only=false "
                     "(its blocks are called without the mask): converted as not causal")
    elif p["use_causal_attention"]:
        notes.append(f"causal mask: the official one is {p['temporal_length']}×{p['temporal_length']} (it runs at "
                     f"T = temporal_length only); moviola's is T×T")
    if p.get("use_fp16"):
        notes.append("use_fp16=true: the official U-Net computes in float16; the converted weights are float32")
    return notes


# ---------------------------------------------------------------- the table
def module_table(p: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(moviola module, official module, kind)`` for every module with parameters, in forward order. ``kind``:
    ``same`` (identical leaf names), ``resnet`` (ResBlock leaves renamed), ``temporal`` (identical leaves; Conv1d
    projections squeezed)."""
    n, R = len(p["channel_mult"]), p["num_res_blocks"]
    attends = [2 ** level in p["attention_resolutions"] for level in range(n)]
    rows = [("unet.conv_in", "input_blocks.0.0", "same"), ("unet.time_embedding.linear_1", "time_embed.0", "same"),
            ("unet.time_embedding.linear_2", "time_embed.2", "same")]
    if p["fps_cond"]:
        rows += [("fps_embedding.linear_1", "fps_embedding.0", "same"),
                 ("fps_embedding.linear_2", "fps_embedding.2", "same")]
    if p["addition_attention"]:
        rows.append(("unet.transformer_in", "init_attn.0", "temporal"))

    def resblock(ours: str, r: int, official: str) -> None:
        rows.append((f"{ours}.resnets.{r}", official, "resnet"))
        if p["temporal_conv"]:
            rows.append((f"{ours}.temp_convs.{r}", f"{official}.temopral_conv", "same"))

    def transformers(ours: str, r: int, spatial: str, temporal: str) -> None:
        rows.append((f"{ours}.attentions.{r}", spatial, "same"))
        rows.append((f"{ours}.temp_attentions.{r}", temporal, "temporal"))

    idx = 1
    for level in range(n):
        ours = f"unet.down_blocks.{level}"
        for r in range(R):
            resblock(ours, r, f"input_blocks.{idx}.0")
            if attends[level]:
                transformers(ours, r, f"input_blocks.{idx}.1", f"input_blocks.{idx}.2")
            idx += 1
        if level < n - 1:
            rows.append((f"{ours}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", "same"))
            idx += 1
    resblock("unet.mid_block", 0, "middle_block.0")
    transformers("unet.mid_block", 0, "middle_block.1", "middle_block.2")
    resblock("unet.mid_block", 1, "middle_block.3")
    idx = 0
    for u, level in enumerate(reversed(range(n))):
        ours = f"unet.up_blocks.{u}"
        for r in range(R + 1):
            resblock(ours, r, f"output_blocks.{idx}.0")
            if attends[level]:
                transformers(ours, r, f"output_blocks.{idx}.1", f"output_blocks.{idx}.2")
            if level > 0 and r == R:  # the Upsample closes the level's last block, after its transformers
                at = 3 if attends[level] else 1
                rows.append((f"{ours}.upsamplers.0.conv", f"output_blocks.{idx}.{at}.conv", "same"))
            idx += 1
    rows += [("unet.conv_norm_out", "out.0", "same"), ("unet.conv_out", "out.2", "same")]
    if p["use_image_attention"]:  # the Resampler: a top-level module of LatentVisualDiffusion, the same names
        rows.append(("image_proj_model", "image_proj_model", "same"))
    return rows


def _official_name(key: str, by_ours: dict[str, tuple[str, str]]) -> Optional[str]:
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        row = by_ours.get(".".join(parts[:i]))
        if row is None:
            continue
        official, kind = row
        leaf = ".".join(parts[i:])
        if kind == "resnet":
            module, param = leaf.rsplit(".", 1)
            if module not in _RESNET_LEAVES_BACK:
                return None
            leaf = f"{_RESNET_LEAVES_BACK[module]}.{param}"
        return f"{official}.{leaf}"
    return None


# ---------------------------------------------------------------- the moviola config
def model_section(p: dict[str, Any], image: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The ``model:`` section (family videocrafter) of these UNetModel arguments (and image-branch keys)."""
    channels = [m * p["model_channels"] for m in p["channel_mult"]]
    heads = ({"head_channels": p["num_head_channels"]} if p["num_head_channels"] != -1
             else {"num_heads": p["num_heads"]})
    section = {"family": "videocrafter", "size": "vc512" if channels == [320, 640, 1280, 1280] else "tiny",
               "block_out_channels": channels, "layers_per_block": p["num_res_blocks"],
               "attention_resolutions": sorted(p["attention_resolutions"]), **heads, "norm_num_groups": 32,
               "use_linear_projection": bool(p["use_linear"]), "transformer_layers": p["transformer_depth"],
               "learned_sigma": False, "temporal_conv": bool(p["temporal_conv"]),
               "relative_position": bool(p["use_relative_position"]),
               "temporal_length": int(p["temporal_length"] or 16),
               "causal_attention": bool(p["use_causal_attention"] and p["temporal_selfatt_only"]),
               "temporal_self_attention_only": bool(p["temporal_selfatt_only"]),
               "addition_attention": bool(p["addition_attention"]), "input_attention_heads": 8}
    if p["addition_attention"]:
        section["input_attention_head_channels"] = p["num_head_channels"]
    return {**section, **(image or {})}


def _build_meta(section: dict, conditions: ConditionsConfig, in_channels: int) -> torch.nn.Module:
    from moviola.models.registry import build_model

    try:
        model_cfg = model_config_from_dict(section)
        with torch.device("meta"):
            return build_model(model_cfg, conditions, in_channels)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"this VideoCrafter U-Net cannot be converted: {str(e).splitlines()[0]}") from None


def videocrafter_to_moviola(sd: dict[str, torch.Tensor], yaml_unet: Optional[dict[str, Any]] = None
                            ) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """An official VideoCrafter state dict (Lightning or bare; meta tensors work) -> (info, the moviola state dict,
    notes). ``info``: ``model`` (the model section), ``conditions`` (text_channels, fps), ``params`` (the official
    UNetModel arguments), ``buffers`` and ``others`` (what was not converted, by part). Every official U-Net tensor
    becomes exactly one moviola tensor; unknown and missing keys are listed by official name."""
    unet, buffers, others = split_checkpoint(sd)
    proj = {k: sd[k] for k in others.pop("image_proj_model.", [])}
    inferred, hints = infer_unet_params(unet)
    p = merge_params(inferred, hints, yaml_unet)
    image = infer_image_params(proj, bool(p["use_image_attention"]))
    notes = check_expressible(p)
    section = model_section(p, image)
    conditions = ConditionsConfig(text_channels=p["context_dim"], fps=bool(p["fps_cond"]), image=image is not None)
    model = _build_meta(section, conditions, p["in_channels"])
    expected = model.state_dict()
    official = {**unet, **proj}  # U-Net names (under model.diffusion_model.) and image_proj_model.*

    by_ours = {ours: (official, kind) for ours, official, kind in module_table(p)}
    official_of: dict[str, str] = {}
    for key in expected:
        name = _official_name(key, by_ours)
        if name is None:  # the table misses a module the model has: a bug here, not in the file
            raise CheckpointError(f"internal: no official name for moviola's {key}")
        official_of[key] = name
    ours_of = {v: k for k, v in official_of.items()}
    if len(ours_of) != len(official_of):
        raise CheckpointError("internal: two moviola tensors map to one official tensor")
    missing = sorted(set(ours_of) - set(official))
    unknown = sorted(set(official) - set(ours_of))
    if missing or unknown:
        parts = ([f"missing keys {_listing(missing)}"] if missing else []) + (
            [f"unknown keys {_listing(unknown)}"] if unknown else [])
        raise CheckpointError(f"the official U-Net does not fit the layout its shapes describe "
                              f"({len(p['channel_mult'])} levels, {p['num_res_blocks']} ResBlocks each): "
                              f"{'; '.join(parts)} (U-Net names are under {UNET_PREFIX})")
    out, bad = {}, []
    for name, v in official.items():
        key = ours_of[name]
        if v.dim() == 3 and name.endswith(("proj_in.weight", "proj_out.weight")):
            v = v[..., 0]  # a temporal transformer's Conv1d of kernel 1 is a Linear
        if tuple(v.shape) != tuple(expected[key].shape):
            bad.append(f"{name} {tuple(v.shape)} (expected {tuple(expected[key].shape)})")
        out[key] = v
    if bad:
        raise CheckpointError(f"official tensors with the wrong shape for the layout the others describe: "
                              f"{_listing(bad, 5)}")
    for part, keys in others.items():
        notes.append(f"not converted: {part}* ({len(keys)} tensors): {OTHER_PARTS[part]}")
    if image is not None:
        notes.append("image-to-video: give Conditioning.image_tokens = the OpenCLIP ViT-H-14 image encoder's "
                     "last-layer tokens (FrozenOpenCLIPImageEmbedderV2: 257×1280); the official null image is the "
                     "resampled tokens of a black image, moviola's is no image contribution (all-zero tokens)")
    info = {"model": section, "conditions": {"text_channels": p["context_dim"], "fps": bool(p["fps_cond"]),
                                             "image": image is not None},
            "params": p, "buffers": buffers, "others": others}
    return info, out, notes


# ---------------------------------------------------------------- the schedule
def _ldm_betas(schedule: str, n: int, start: float, end: float) -> torch.Tensor:
    """lvdm's make_beta_schedule (float64)."""
    if schedule == "linear":  # lvdm's "linear" is SD's scaled linear
        return torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
    if schedule == "sqrt_linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if schedule == "cosine":
        s = 8e-3
        steps = torch.arange(n + 1, dtype=torch.float64) / n + s
        a = torch.cos(steps / (1 + s) * math.pi / 2) ** 2
        return (1 - a[1:] / a[:-1]).clamp(max=0.999)
    raise CheckpointError(f"beta_schedule={schedule!r}: moviola has linear (lvdm sqrt_linear), scaled_linear (lvdm "
                          "linear) and cosine")


_MOVIOLA_SCHEDULE = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "cosine"}


def _close(betas: torch.Tensor, ours: torch.Tensor) -> bool:
    return betas.shape == ours.shape and bool(torch.allclose(betas.double(), ours, rtol=1e-5, atol=1e-8))


def diffusion_section(params: dict[str, Any], buffers: dict[str, torch.Tensor], yaml_given: bool,
                      source: str = "--config") -> tuple[dict[str, Any], list[str]]:
    """moviola's ``diffusion:`` section from the YAML's model.params (or lvdm's config values) checked against the
    checkpoint's ``betas``, or inferred from ``betas`` alone; and warnings (use_scale)."""
    notes = []
    param = params.get("parameterization", "eps")
    if param not in ("eps", "x0"):
        raise CheckpointError(f"{source}: parameterization={param!r} (lvdm has eps and x0)")
    if params.get("given_betas") is not None:
        raise CheckpointError(f"{source}: given_betas (an explicit beta table) is not a moviola schedule")
    betas = buffers.get("betas")
    if betas is not None and betas.is_meta:
        betas = None
    if yaml_given or betas is None:
        kind = params.get("beta_schedule", "linear")
        n = int(params.get("timesteps", 1000))
        default = (1e-4, 2e-2) if yaml_given else (0.00085, 0.012)  # lvdm DDPM's defaults; VideoCrafter's values
        start = float(params.get("linear_start", default[0]))
        end = float(params.get("linear_end", default[1]))
        ours = _ldm_betas(kind, n, start, end)
        if betas is not None and not _close(betas, ours):
            raise CheckpointError(f"{source} disagrees with the weights: beta_schedule={kind!r}, linear_start={start}, "
                                  f"linear_end={end}, timesteps={n} in the YAML, but the checkpoint's betas run "
                                  f"{betas[0].item():.6g} … {betas[-1].item():.6g} over {betas.numel()} steps")
    else:  # the betas alone: which lvdm schedule are they?
        n, start, end = betas.numel(), betas[0].item(), betas[-1].item()
        kind = next((k for k in ("linear", "sqrt_linear", "cosine") if _close(betas, _ldm_betas(k, n, start, end))),
                    None)
        if kind is None:
            raise CheckpointError("the checkpoint's betas are not an lvdm linear, sqrt_linear or cosine schedule")
    section = {"schedule": _MOVIOLA_SCHEDULE[kind], "num_timesteps": n, "beta_start": start, "beta_end": end,
               "prediction": param}
    use_scale = params.get("use_scale", False) if yaml_given else "scale_arr" in buffers
    if yaml_given and bool(use_scale) != ("scale_arr" in buffers) and buffers:
        raise CheckpointError(f"{source} disagrees with the weights: use_scale={use_scale!r} in the YAML, but the "
                              f"checkpoint {'has' if 'scale_arr' in buffers else 'has no'} scale_arr buffer")
    if use_scale:
        scale_b = params.get("scale_b", 0.3)
        if "scale_arr" in buffers and not buffers["scale_arr"].is_meta:
            scale_b = round(buffers["scale_arr"][-1].item(), 6)
        section["x0_scale"] = {"scale_a": float(params.get("scale_a", 1.0)), "scale_b": float(scale_b),
                               "mid_step": int(params.get("mid_step", 400))}
        notes.append(f"use_scale (scale_b={scale_b}): x0 is scaled by scale_arr[t] in training and sampling "
                     "(diffusion.x0_scale), as the official q_sample and DDIM step")
    # the official DDIM: timesteps 981 … 1 (an offset of 1) ending on alphas_cumprod[0]
    section.update(timestep_spacing="leading", steps_offset=1, final_alpha="first")
    return section, notes


# ---------------------------------------------------------------- the command
def convert_videocrafter(src: Union[str, Path], out_dir: Union[str, Path], vae: Union[str, Path],
                         config: Optional[Union[str, Path]] = None, text_encoder: Optional[Union[str, Path]] = None,
                         notes: Optional[list[str]] = None) -> Path:
    """``moviola convert videocrafter CKPT OUT --vae DIR``: an official VideoCrafter checkpoint (``model.ckpt``, read
    with ``torch.load(weights_only=True)``) -> a checkpoint directory whose ``load_model`` computes the official
    U-Net's output. ``vae``: the diffusers AutoencoderKL directory of the SD VAE (only its config.json is read
    here); ``config``: the official inference YAML (else what the tensors show, with lvdm's schedule);
    ``text_encoder``: a transformers CLIP text encoder directory. ``notes`` (a list) receives what was not
    converted or differs."""
    sd = load_foreign_state_dict(src)
    yaml_unet = ldm = None
    if config is not None:
        yaml_unet, ldm = read_official_yaml(config)
        key = ldm.get("conditioning_key", "crossattn")
        if key != "crossattn":
            raise CheckpointError(f"--config: conditioning_key={key!r} (moviola's videocrafter converts crossattn, "
                                  "text-to-video)")
    info, out, found = videocrafter_to_moviola(sd, yaml_unet)
    diffusion, warn = diffusion_section(ldm or {}, info["buffers"], ldm is not None)
    for w in warn:
        warnings.warn(w, stacklevel=2)
    scale = (ldm or {}).get("scale_factor", 0.18215)
    if "scale_factor" in info["buffers"]:  # scale_by_std: the factor is a buffer
        scale = float(info["buffers"]["scale_factor"].item())
    image_size = (ldm or {}).get("image_size")
    levels = len(info["model"]["block_out_channels"])
    tree: dict[str, Any] = {
        "name": Path(src).stem, "model": info["model"],
        "conditions": {**info["conditions"], "text_dropout": float((ldm or {}).get("uncond_prob", 0.2))},
        "autoencoder": {"kind": "frame_vae", "path": str(Path(vae).absolute()), "scaling_factor": float(scale)},
        "diffusion": diffusion,
        "sample": {"sampler": "ddim", "steps": 50, "cfg": 12.0, "eta": 1.0}}
    ae = AutoencoderConfig(kind="frame_vae", path=str(vae))
    try:
        factor, latent = autoencoder_spatial_factor(ae), autoencoder_latent_channels(ae)
    except (ConfigError, OSError, ValueError) as e:
        raise CheckpointError(f"--vae {vae}: {str(e).splitlines()[0]}") from None
    if latent != info["params"]["in_channels"]:
        raise CheckpointError(f"the VAE at {vae} has {latent} latent channels, the U-Net takes "
                              f"{info['params']['in_channels']}")
    step = factor * 2 ** (levels - 1)
    side = (min(image_size) if isinstance(image_size, (list, tuple)) else image_size) if image_size else 40
    size = -(-int(side) * factor // step) * step  # the short side (moviola's clips are square), a valid size
    tree["data"] = {"dataset": "folder", "root": "data/videos", "size": size, "frames": 16}  # VideoCrafter's clips
    if tree.get("conditions", {}).get("fps"):  # the rate the official text-to-video script conditions on
        tree["data"]["fps"] = 28
    if text_encoder is not None:
        tree["text"] = {"encoder": str(Path(text_encoder).absolute()), "max_length": 77, "layer": "penultimate"}
    try:
        cfg = load_config(data=tree, checkpoint=True)  # (VC1 I2V: no image.encoder, its OpenCLIP is not converted)
    except ConfigError as e:
        raise CheckpointError(f"this VideoCrafter checkpoint cannot be converted: {str(e).splitlines()[0]}") from None
    if notes is not None:
        notes.extend(found)
    return write_checkpoint_dir(out_dir, cfg, out)
