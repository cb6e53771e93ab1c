"""Video LDM ("Align your Latents"): an image LDM U-Net with α-blended temporal layers (model.py, blocks.py)."""
from moviola.models.video_ldm.model import VideoLDM

__all__ = ["VideoLDM"]
