"""Generation over the denoiser protocol: conditions → denoise → decode (base.py), loading (generate.py)."""
from moviola.pipelines.base import Conditions, Pipeline
from moviola.pipelines.generate import load_pipeline

__all__ = ["Conditions", "Pipeline", "load_pipeline"]
