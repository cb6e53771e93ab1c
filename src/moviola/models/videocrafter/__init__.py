"""VideoCrafter 1 / 2 (and ModelScope T2V): Stable Diffusion's U-Net with plain-residual temporal layers
(model.py, blocks.py)."""
from moviola.models.videocrafter.model import VideoCrafter

__all__ = ["VideoCrafter"]
