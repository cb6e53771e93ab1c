from __future__ import annotations

import torch


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: scale and shift normalized tokens by vectors computed from the conditioning."""
    return x * (1 + scale) + shift
