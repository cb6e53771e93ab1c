"""Named model sizes and the one function that builds a denoiser from a ModelConfig."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Latte's sizes (paper Table / official registry). ``depth`` counts all blocks, spatial and
# temporal together, as the official code does: XL has 14 spatial + 14 temporal blocks.
LATTE_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0),
}
PATCH_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelDims:
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float


def model_names() -> list[str]:
    """``Latte-XL/2`` style names of every size × patch combination."""
    return [f"Latte-{s}/{p}" for s in LATTE_SIZES for p in (2, 4, 8)]


def resolve_model_dims(cfg) -> ModelDims:
    from moviola.config import ConfigError

    if cfg.size not in LATTE_SIZES:
        raise ConfigError(f"model.size {cfg.size!r} is not one of {list(LATTE_SIZES)}")
    if cfg.patch_size not in PATCH_SIZES:
        raise ConfigError(f"model.patch_size must be one of {PATCH_SIZES}, got {cfg.patch_size}")
    base = LATTE_SIZES[cfg.size]
    dims = ModelDims(
        hidden_size=cfg.hidden_size or base["hidden_size"],
        depth=cfg.depth or base["depth"],
        num_heads=cfg.num_heads or base["num_heads"],
        mlp_ratio=cfg.mlp_ratio or base["mlp_ratio"],
    )
    if dims.hidden_size % dims.num_heads:
        raise ConfigError(f"model.hidden_size={dims.hidden_size} is not divisible by "
                          f"model.num_heads={dims.num_heads}")
    if dims.hidden_size % 4:
        raise ConfigError(f"model.hidden_size={dims.hidden_size} must be a multiple of 4 "
                          "(2-D sin-cos position embedding)")
    if dims.depth % 2 and getattr(cfg, "variant", 1) != 4:
        raise ConfigError(f"model.depth={dims.depth} must be even: Latte pairs each spatial "
                          "attention with a temporal one (variant 4, whose blocks do both, takes any depth)")
    if dims.depth <= 0:
        raise ConfigError(f"model.depth must be positive (got {dims.depth})")
    return dims


def build_model(cfg, in_channels: int) -> nn.Module:
    """The denoiser a ModelConfig describes, for latents with ``in_channels`` channels."""
    from moviola.models.latte import LATTE_VARIANTS

    dims = resolve_model_dims(cfg)
    if cfg.family == "latte":
        return LATTE_VARIANTS[cfg.variant](
            in_channels=in_channels, patch_size=cfg.patch_size, hidden_size=dims.hidden_size,
            depth=dims.depth, num_heads=dims.num_heads, mlp_ratio=dims.mlp_ratio,
            num_classes=cfg.num_classes, learned_sigma=cfg.learned_sigma, qk_norm=cfg.qk_norm,
            patch_embed=cfg.patch_embed, tubelet_size=cfg.tubelet_size, injection=cfg.injection,
            temporal_pos=cfg.temporal_pos, caption_channels=cfg.caption_channels,
            pos_base_size=cfg.pos_base_size, pos_interpolation_scale=cfg.pos_interpolation_scale,
            text_pooled=cfg.text_pooled, context_frames=cfg.context_frames)
    raise ValueError(f"unknown model family {cfg.family!r}")
