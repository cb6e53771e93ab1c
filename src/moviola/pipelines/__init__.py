"""Generation over the denoiser protocol: conditions → denoise → decode (base.py), loading (generate.py), long videos
(long_video.py: autoregressive prediction; fifo.py: FIFO-Diffusion)."""
from moviola.pipelines.base import Conditions, Pipeline
from moviola.pipelines.fifo import FIFO
from moviola.pipelines.generate import load_pipeline
from moviola.pipelines.inputs import Sampling
from moviola.pipelines.long_video import Autoregressive

__all__ = ["Autoregressive", "Conditions", "FIFO", "Pipeline", "Sampling", "load_pipeline"]
