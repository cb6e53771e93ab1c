"""Initializations the transformer families share."""
from __future__ import annotations

from torch import nn


def dit_init(model: nn.Module, patch_proj: nn.Module) -> None:
    """DiT's base initialization: Xavier-uniform for every Linear (zero bias), and the patch embedding's
    convolution initialized like a Linear on flattened patches. Family-specific choices (embedders, zeroed
    modulation and output layers) come after it."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    w = patch_proj.weight
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like a Linear on flattened patches
    nn.init.zeros_(patch_proj.bias)
