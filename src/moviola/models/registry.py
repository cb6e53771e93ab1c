"""Which model class each ``model.family`` builds: the family's config class and its model class, together.

``config/models.py`` knows the config classes (configs are read below the models' layer); this
table pairs each with its model, and a test holds the two tables to the same families.
"""
from __future__ import annotations

from torch import nn

from moviola.config import ConditionsConfig, LatteConfig, VideoCrafterConfig, VideoLDMConfig, WaltConfig
from moviola.models.latte import Latte
from moviola.models.video_ldm import VideoLDM
from moviola.models.videocrafter import VideoCrafter
from moviola.models.walt import Walt

FAMILIES: dict[str, tuple[type, type]] = {
    "latte": (LatteConfig, Latte),
    "walt": (WaltConfig, Walt),
    "video_ldm": (VideoLDMConfig, VideoLDM),
    "videocrafter": (VideoCrafterConfig, VideoCrafter),
}


def build_model(model_cfg, conditions: ConditionsConfig, in_channels: int) -> nn.Module:
    """The denoiser a ``model:`` section describes, for the run's conditions and latents with
    ``in_channels`` channels."""
    config_class, cls = FAMILIES[model_cfg.family] if model_cfg.family in FAMILIES else (None, None)
    if cls is None or not isinstance(model_cfg, config_class):
        raise ValueError(f"model.family {model_cfg.family!r} with a {type(model_cfg).__name__}: "
                         f"known families are {sorted(FAMILIES)}")
    return cls.from_config(model_cfg, conditions, in_channels)
