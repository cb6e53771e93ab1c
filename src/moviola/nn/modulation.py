"""How a transformer block hears the conditioning vector (timestep, class, pooled text): three kinds.

- ``AdaLNZero`` (DiT; Latte's "S-AdaLN"): the block regresses shift, scale and gate vectors from the
  conditioning vector with its own ``adaLN_modulation`` layer, zero-initialized so the block starts
  as the identity.
- ``AdaLNSingle`` (PixArt-α; Latte-1): the model regresses the vectors once from the timestep; each
  block only adds its learned ``scale_shift_table``.
- ``TokenInjection``: no modulation. The timestep and class are extra tokens in the sequence, and the
  block is a plain pre-LN transformer block whose LayerNorms have their own affine parameters.
- ``AdaLNLoRA`` (W.A.L.T, Eq. 3): one full regression shared by every layer (``AdaLNLoRAShared``,
  owned by the model), plus a rank-r update per layer: ``A^i = A^1 + W_b^i W_a^i SiLU(c + t)``.

A modulation object holds no weights: it creates them on the block it is attached to, under the
names the released checkpoints use (``adaLN_modulation``, ``scale_shift_table``), so weights load
across every converter unchanged. ``MODULATIONS`` names them for configs (``model.injection``).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: scale and shift normalized tokens by vectors computed from the conditioning."""
    return x * (1 + scale) + shift


def modulated(x: torch.Tensor, shift: Optional[torch.Tensor], scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``modulate``, or x unchanged when the block has no modulation (token injection)."""
    return x if shift is None else modulate(x, shift, scale)


def gated(gate: Optional[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    return y if gate is None else gate * y


class Modulation:
    """The base: the norm a modulated block uses, the parameters it adds, the vectors it computes."""

    kind = ""
    norm_affine = False  # modulated norms have no affine of their own: the conditioning supplies it

    def norm(self, dim: int) -> nn.LayerNorm:
        return nn.LayerNorm(dim, elementwise_affine=self.norm_affine, eps=1e-6)

    def attach(self, block: nn.Module, dim: int, chunks: int) -> None:
        """Create this modulation's parameters on ``block`` (``chunks`` vectors of width ``dim``)."""
        block.chunks = chunks

    def vectors(self, block: nn.Module, c: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        """``block.chunks`` vectors from the conditioning ``c`` (or Nones: no modulation)."""
        return (None,) * block.chunks

    def final_vectors(self, block: nn.Module, c: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        """The final layer's shift and scale; ``c`` is the (unprojected) conditioning vector."""
        return self.vectors(block, c)

    def zero_init(self, block: nn.Module) -> None:
        """Make the block start as the identity where this modulation can (adaLN-Zero)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AdaLNZero(Modulation):
    kind = "adaln"

    def attach(self, block: nn.Module, dim: int, chunks: int) -> None:
        super().attach(block, dim, chunks)
        block.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, chunks * dim))

    def vectors(self, block: nn.Module, c: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        return block.adaLN_modulation(c).chunk(block.chunks, dim=-1)

    def zero_init(self, block: nn.Module) -> None:
        nn.init.zeros_(block.adaLN_modulation[-1].weight)
        nn.init.zeros_(block.adaLN_modulation[-1].bias)


class AdaLNSingle(Modulation):
    """Each block adds its table to the model's one shared ``chunks·D`` projection of the timestep."""

    kind = "adaln_single"

    def attach(self, block: nn.Module, dim: int, chunks: int) -> None:
        super().attach(block, dim, chunks)
        block.scale_shift_table = nn.Parameter(torch.randn(chunks, dim) / dim ** 0.5)  # as PixArt

    def vectors(self, block: nn.Module, c: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        table = block.scale_shift_table.to(c.dtype)
        return (table + c.unflatten(-1, (block.chunks, -1))).unbind(-2)  # (..., k, D) -> k × (..., D)

    def final_vectors(self, block: nn.Module, c: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        # the final layer adds the conditioning vector itself, unprojected, to its (2, D) table
        return (block.scale_shift_table.to(c.dtype) + c.unsqueeze(-2)).unbind(-2)


class TokenInjection(Modulation):
    kind = "tokens"
    norm_affine = True


class LoRACondition(NamedTuple):
    """What an AdaLN-LoRA layer reads: the shared vectors A^1 (..., chunks·D) and SiLU(c) (..., D)."""

    shared: torch.Tensor
    hidden: torch.Tensor


class AdaLNLoRAShared(nn.Module):
    """W.A.L.T's A^1 = MLP(c + t): DiT's adaLN regression (SiLU, then one linear map to ``chunks`` vectors),
    computed once per forward and shared by every AdaLN-LoRA layer. Zero-initialized (adaLN-Zero)."""

    def __init__(self, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(dim, chunks * dim)

    def forward(self, c: torch.Tensor) -> LoRACondition:
        hidden = F.silu(c)  # (..., D)
        return LoRACondition(self.linear(hidden), hidden)  # (..., chunks·D), (..., D)

    def zero_init(self) -> None:
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)


class AdaLNLoRA(Modulation):
    """AdaLN-LoRA (W.A.L.T, Gupta et al. 2023, Eq. 3): layer i's vectors are the shared A^1 plus a rank-r
    update of the same input, ``A^i = A^1 + W_b^i W_a^i SiLU(c + t)``, W_a^i: D -> r, W_b^i: r -> chunks·D,
    no biases: ``r·(D + chunks·D)`` parameters a layer instead of DiT's ``chunks·D·(D + 1)``.

    ``rank=0`` gives a layer A^1 itself (Eq. 3 read literally: "for i ≠ 1"). The block gets ``adaLN_lora``
    (W_a, then W_b); W_b starts at zero, so with a zero A^1 every layer starts as the identity.
    ``vectors`` takes a ``LoRACondition`` (from the model's ``AdaLNLoRAShared``).
    """

    kind = "adaln_lora"

    def __init__(self, rank: int):
        if rank < 0:
            raise ValueError(f"AdaLN-LoRA rank must be 0 (the shared vectors alone) or more, got {rank}")
        self.rank = rank

    def attach(self, block: nn.Module, dim: int, chunks: int) -> None:
        super().attach(block, dim, chunks)
        if self.rank:
            block.adaLN_lora = nn.Sequential(nn.Linear(dim, self.rank, bias=False),
                                             nn.Linear(self.rank, chunks * dim, bias=False))

    def vectors(self, block: nn.Module, c: LoRACondition) -> tuple[Optional[torch.Tensor], ...]:
        a = c.shared if not self.rank else c.shared + block.adaLN_lora(c.hidden)  # (..., chunks·D)
        return a.chunk(block.chunks, dim=-1)

    def zero_init(self, block: nn.Module) -> None:
        if self.rank:
            nn.init.zeros_(block.adaLN_lora[-1].weight)

    @staticmethod
    def parameter_count(dim: int, chunks: int, rank: int, updates: int) -> int:
        """The shared regression (chunks·D·D weights + chunks·D biases) and ``updates`` rank-r updates."""
        return chunks * dim * (dim + 1) + updates * rank * (dim + chunks * dim)

    def __repr__(self) -> str:
        return f"AdaLNLoRA(rank={self.rank})"


MODULATIONS: dict[str, Modulation] = {m.kind: m for m in (AdaLNZero(), AdaLNSingle(), TokenInjection())}


def modulation(kind: "str | Modulation") -> Modulation:
    """The modulation named ``kind`` (``adaln``, ``adaln_single``, ``tokens``), or ``kind`` itself."""
    if isinstance(kind, Modulation):
        return kind
    if kind not in MODULATIONS:
        raise ValueError(f"unknown injection {kind!r}; choose one of {list(MODULATIONS)}")
    return MODULATIONS[kind]
