"""Frozen dataclass configs, built from YAML with strict keys.

Every key a config file may hold is a dataclass field: the run's sections in ``run.py``, the
``model:`` section (one dataclass per family, chosen by ``model.family``) in ``models.py``, the
``autoencoder:`` section in ``autoencoder.py``. ``loader.py`` reads files and overrides and
migrates renamed keys; ``to_dict`` gives the resolved config saved beside every checkpoint.
"""
from moviola.config.autoencoder import (AutoencoderConfig, VAELossConfig, autoencoder_latent_channels,
                                        autoencoder_spatial_factor, autoencoder_temporal_factor, latent_frames)
from moviola.config.base import ConfigError, config_changes, from_dict, leaves, to_dict
from moviola.config.loader import (absolute_paths, build_config, config_from_json, load_config, locate_autoencoder,
                                   migrate, parse_override, save_config, yaml_load)
from moviola.config.models import (LATTE_LAYOUTS, LATTE_SIZES, MODEL_CONFIGS, VIDEO_LDM_SIZES, VIDEOCRAFTER_SIZES,
                                   WALT_SIZES, LatteConfig, ModelDims, UNetDims, VideoCrafterConfig, VideoLDMConfig,
                                   WaltConfig)
from moviola.config.run import (ConditionsConfig, DataConfig, ShapesPalette, DiffusionConfig, ImageConfig, RunConfig,
                                SampleConfig, TextConfig, TrainConfig)

__all__ = ["AutoencoderConfig", "ConditionsConfig", "ConfigError", "DataConfig", "ShapesPalette", "DiffusionConfig", "ImageConfig", "LATTE_LAYOUTS",
           "LATTE_SIZES", "LatteConfig", "MODEL_CONFIGS", "ModelDims", "RunConfig", "SampleConfig", "TextConfig",
           "TrainConfig", "VAELossConfig", "UNetDims", "VIDEO_LDM_SIZES", "VideoLDMConfig", "VIDEOCRAFTER_SIZES", "VideoCrafterConfig",
           "WALT_SIZES", "WaltConfig", "absolute_paths",
           "autoencoder_latent_channels", "autoencoder_spatial_factor", "autoencoder_temporal_factor",
           "build_config", "config_changes", "config_from_json", "from_dict", "latent_frames", "leaves",
           "load_config", "locate_autoencoder", "migrate", "parse_override", "save_config", "to_dict", "yaml_load"]
