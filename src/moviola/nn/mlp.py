from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class Mlp(nn.Module):
    """Two linear layers with tanh-GELU between (timm ``Mlp`` names: fc1, fc2); ``dim -> dim`` unless
    ``out_dim`` is given (PixArt's caption projection is such an Mlp, 4096 -> D -> D)."""

    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
