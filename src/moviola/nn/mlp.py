from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """Two linear layers with tanh-GELU between (timm ``Mlp`` names: fc1, fc2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
