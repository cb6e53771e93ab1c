"""Weights from elsewhere: official Latte checkpoints, diffusers' LatteTransformer3DModel (both
ways), diffusers' UNet2DConditionModel (Stable Diffusion) as a Video LDM, diffusers' UNet3DConditionModel
(ModelScope) as a VideoCrafter, official VideoCrafter 1/2 checkpoints (lvdm), and DiT image checkpoints as the
initialization of a video model; and Video LDM's spatial-layer swap (a personalized image model under a video
model's temporal layers).

Every converter renames and reshapes tensors only; none runs code from the file it reads
(``.pt`` files go through ``load_foreign_state_dict``, i.e. ``torch.load(weights_only=True)``).
"""
from moviola.interop.common import write_checkpoint_dir
from moviola.interop.diffusers_latte import (diffusers_to_moviola, export_diffusers, import_diffusers,
                                                    moviola_to_diffusers)
from moviola.interop.diffusers_unet import import_diffusers_unet
from moviola.interop.diffusers_unet3d import import_diffusers_unet3d
from moviola.interop.dit_init import init_from_dit
from moviola.interop.official import convert_official, official_to_moviola
from moviola.interop.swap_spatial import swap_spatial
from moviola.interop.videocrafter_official import convert_videocrafter, videocrafter_to_moviola

__all__ = ["convert_official", "convert_videocrafter", "diffusers_to_moviola", "export_diffusers", "import_diffusers",
           "import_diffusers_unet", "import_diffusers_unet3d", "init_from_dit", "moviola_to_diffusers",
           "official_to_moviola", "swap_spatial", "videocrafter_to_moviola", "write_checkpoint_dir"]
