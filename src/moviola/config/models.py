"""The ``model:`` section: one frozen dataclass per family, chosen by ``model.family``.

Each family's config holds its own switches and named sizes, validates them against the run
(``validate(run)``), says which conditions the family can take (``conditions``), and migrates the
keys of configs saved before a rename (``migrate``). A key of another family is an error that
names both: "'window_size' is not a latte key (it is a walt key)".

To add a family: a dataclass here with ``family: Literal["<name>"]``, registered in
``MODEL_CONFIGS``; its model class in ``models/<name>/`` registered in ``models/registry.py``
(docs/architecture.md walks through it).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Optional

from moviola.config.autoencoder import autoencoder_spatial_factor, latent_frames
from moviola.config.base import ConfigError, check_ranges, from_dict


@dataclass(frozen=True)
class ModelDims:
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float


# Latte's sizes (paper Table / official registry). ``depth`` counts all blocks, spatial and
# temporal together, as the official code does: XL has 14 spatial + 14 temporal blocks.
LATTE_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=64, depth=4, num_heads=4, mlp_ratio=4.0),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0),
}
LATTE_PATCH_SIZES = (1, 2, 4, 8)
# Latte's four ways for space and time to meet (paper §3.2); configs before the rename said variant: 1..4
LATTE_LAYOUTS = ("interleaved", "late_fusion", "factorized_attention", "factorized_heads")


@dataclass(frozen=True)
class LatteConfig:
    """Latte (Ma et al. 2024): a video DiT with every design switch of the paper; the defaults are the
    released model."""

    family: Literal["latte"] = "latte"
    size: str = "tiny"  # a named size (tiny, S, B, L, XL); the fields below override it
    patch_size: int = 2
    hidden_size: Optional[int] = None
    depth: Optional[int] = None  # total transformer blocks (spatial + temporal), as Latte counts
    num_heads: Optional[int] = None
    mlp_ratio: Optional[float] = None
    learned_sigma: bool = False
    qk_norm: bool = False
    # interleaved spatial/temporal blocks, all spatial then all temporal, factorized attention in one
    # block, or one attention whose heads split between space and time
    layout: Literal["interleaved", "late_fusion", "factorized_attention", "factorized_heads"] = "interleaved"
    patch_embed: Literal["frame", "tubelet"] = "frame"  # per-frame p×p patches, or s×p×p tubelets
    tubelet_size: int = 1  # s, the tubelet's temporal stride (patch_embed=tubelet)
    injection: Literal["adaln", "adaln_single", "tokens"] = "adaln"  # timestep/class: adaLN-Zero, PixArt, tokens
    temporal_pos: Literal["abs", "rope"] = "abs"  # absolute sin-cos, or RoPE in the temporal attention
    # PixArt / diffusers' Latte-1 position scaling: a grid of n tokens gets positions i·base/n/scale.
    # null and 1.0 give integer positions (DiT, Latte); imported Latte-1 models set them.
    pos_base_size: Optional[int] = None
    pos_interpolation_scale: float = 1.0
    # also add the mask-mean of the text tokens to the timestep embedding (a global, adaLN-path
    # text condition beside the cross-attention, as Imagen and SD3 add a pooled embedding)
    text_pooled: bool = False
    spatial_heads: Optional[int] = None  # layout factorized_heads: heads given to space (null = half)

    conditions: ClassVar[frozenset] = frozenset({"labels", "text", "context_frames"})
    joint_images: ClassVar[bool] = True  # image-video joint training (data.use_image_num)
    RANGES: ClassVar[tuple] = (("model.patch_size", 1, None), ("model.hidden_size", 1, None),
                               ("model.depth", 1, None), ("model.num_heads", 1, None),
                               ("model.mlp_ratio", 1e-6, None))

    @staticmethod
    def migrate(section: dict) -> list[tuple[str, str]]:
        """Rename the keys of a model section saved before their rename, in place; returns (old, new) pairs."""
        if "variant" not in section:
            return []
        v = section.pop("variant")
        if type(v) is not int or v not in (1, 2, 3, 4):  # true is not 1, 1.0 is not 1
            raise ConfigError(f"model.variant: {v!r} is not one of [1, 2, 3, 4] (now model.layout: one of "
                              f"{list(LATTE_LAYOUTS)})")
        if section.get("layout", LATTE_LAYOUTS[v - 1]) != LATTE_LAYOUTS[v - 1]:
            raise ConfigError(f"model.variant={v} (the old name of model.layout: {LATTE_LAYOUTS[v - 1]}) and "
                              f"model.layout={section['layout']} are both set: keep model.layout")
        section["layout"] = LATTE_LAYOUTS[v - 1]
        return [("model.variant", "model.layout")]

    def dims(self) -> ModelDims:
        """Width, depth, heads and MLP ratio: the named size, overridden by the fields that are set."""
        if self.size not in LATTE_SIZES:
            raise ConfigError(f"model.size {self.size!r} is not one of {list(LATTE_SIZES)}")
        if self.patch_size not in LATTE_PATCH_SIZES:
            raise ConfigError(f"model.patch_size must be one of {LATTE_PATCH_SIZES}, got {self.patch_size}")
        base = LATTE_SIZES[self.size]
        dims = ModelDims(hidden_size=self.hidden_size or base["hidden_size"], depth=self.depth or base["depth"],
                         num_heads=self.num_heads or base["num_heads"], mlp_ratio=self.mlp_ratio or base["mlp_ratio"])
        if dims.hidden_size % dims.num_heads:
            raise ConfigError(f"model.hidden_size={dims.hidden_size} is not divisible by "
                              f"model.num_heads={dims.num_heads}")
        if dims.hidden_size % 4:
            raise ConfigError(f"model.hidden_size={dims.hidden_size} must be a multiple of 4 "
                              "(2-D sin-cos position embedding)")
        if dims.depth % 2 and self.layout != "factorized_heads":
            raise ConfigError(f"model.depth={dims.depth} must be even: Latte pairs each spatial attention with a "
                              "temporal one (layout factorized_heads, whose blocks do both, takes any depth)")
        if dims.depth <= 0:
            raise ConfigError(f"model.depth must be positive (got {dims.depth})")
        return dims

    def validate(self, run) -> None:
        """Latte's rules against the rest of the run (a RunConfig: frame size, latent frames, conditions)."""
        d, c = run.data, run.conditions
        factor = autoencoder_spatial_factor(run.autoencoder)
        if d.size % (self.patch_size * factor) != 0:
            raise ConfigError(
                f"data.size={d.size} is not divisible by model.patch_size × autoencoder factor "
                f"= {self.patch_size}×{factor}; pick a size that is a multiple of {self.patch_size * factor}")
        dims = self.dims()  # raises on an unknown size or heads not dividing width
        if self.patch_embed == "frame" and self.tubelet_size != 1:
            raise ConfigError(f"model.tubelet_size={self.tubelet_size} needs model.patch_embed=tubelet "
                              "(per-frame patches have tubelet_size 1)")
        if self.tubelet_size < 1:
            raise ConfigError(f"model.tubelet_size must be at least 1 (got {self.tubelet_size})")
        frames = latent_frames(run.autoencoder, d.frames)
        if frames % self.tubelet_size:
            raise ConfigError(f"{frames} {'latent ' if frames != d.frames else ''}frames (data.frames={d.frames}) are "
                              f"not divisible by model.tubelet_size={self.tubelet_size}")
        if self.temporal_pos == "rope" and (dims.hidden_size // dims.num_heads) % 2:
            raise ConfigError(f"model.temporal_pos=rope needs an even head width; hidden_size/num_heads = "
                              f"{dims.hidden_size}/{dims.num_heads} is odd")
        if self.pos_base_size is not None and self.pos_base_size <= 0:
            raise ConfigError(f"model.pos_base_size must be positive or null (got {self.pos_base_size})")
        if self.pos_interpolation_scale <= 0:
            raise ConfigError(f"model.pos_interpolation_scale must be positive (got {self.pos_interpolation_scale})")
        if self.text_pooled and not c.text_channels:
            raise ConfigError("model.text_pooled needs a text model: set conditions.text_channels (the encoder's width)")
        if self.spatial_heads is not None and (self.layout != "factorized_heads"
                                               or not 0 <= self.spatial_heads <= dims.num_heads):
            raise ConfigError(f"model.spatial_heads={self.spatial_heads} needs layout factorized_heads and a value "
                              f"in 0..{dims.num_heads} (model.num_heads)")
        if d.use_image_num and self.patch_embed != "frame":
            raise ConfigError("data.use_image_num > 0 (image-video joint training) needs model.patch_embed=frame: "
                              "a single image cannot fill a tubelet")


# family -> its config class; models/registry.py pairs each with its model class
MODEL_CONFIGS: dict[str, type] = {"latte": LatteConfig}


def _family_keys() -> dict[str, set[str]]:
    return {name: {f.name for f in fields(cls)} for name, cls in MODEL_CONFIGS.items()}


def model_config_from_dict(value: Any, key: str = "model") -> Any:
    """The ``model:`` section as the dataclass of its ``family`` (default latte)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping of model fields, got {value!r}")
    family = value.get("family", "latte")
    if family not in MODEL_CONFIGS:
        raise ConfigError(f"{key}.family: {family!r} is not one of {list(MODEL_CONFIGS)}")

    def other_family(k: str, hint: str) -> str:
        owners = [name for name, keys in _family_keys().items() if k in keys and name != family]
        if owners:
            return (f": it is not a {family} key (it is a {' and '.join(owners)} key; "
                    f"set {key}.family to use that family)")
        return f": it is not a {family} key{hint}"

    return from_dict(MODEL_CONFIGS[family], value, prefix=f"{key}.", unknown_hint=other_family)


def check_model_ranges(values: dict[str, Any], model: Any) -> None:
    check_ranges(values, getattr(model, "RANGES", ()))
