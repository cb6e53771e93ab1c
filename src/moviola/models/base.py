"""The denoiser protocol every model family follows (DESIGN.md, "Contracts").

A family's model class is built from its own config object and the run's conditions::

    model = Family.from_config(model_cfg, conditions, in_channels)
    out = model(x_t, t, cond)          # x_t (B, C, T, H, W); t (B,) or per frame (B, T)

and ``out.shape[2:] == x_t.shape[2:]`` with ``C`` channels, or ``2·C`` with a learned variance
(mean first). Training and generation touch a model only through this protocol; none of them reads
a family's switches.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from moviola.conditioning import Conditioning

STAGES = ("all", "temporal", "spatial")


def stage_parameters(model: nn.Module, stage: str, is_temporal) -> list[nn.Parameter]:
    """``parameter_groups``' common part: every parameter for ``all``, else those whose name ``is_temporal(name)``
    says belong to ``stage`` (``temporal``) or not (``spatial``); another stage is a ValueError."""
    if stage == "all":
        return list(model.parameters())
    if stage not in ("temporal", "spatial"):
        raise ValueError(f"stage must be 'all', 'temporal' or 'spatial', got {stage!r}")
    temporal = stage == "temporal"
    return [p for name, p in model.named_parameters() if bool(is_temporal(name)) == temporal]


@runtime_checkable
class Denoiser(Protocol):
    family: ClassVar[str]  # the model.family that builds it
    accepts: frozenset  # the Conditioning fields it takes; any other one is a ValueError naming it
    learned_sigma: bool  # the output has 2·C channels: the mean, then the variance interpolation
    joint_images: ClassVar[bool]  # takes ``num_images`` trailing single images (image-video joint training)
    # (optional) any_size: ClassVar[bool] — the same weights serve any frame size, so training on crops of the
    # frame is training for the whole frame (train.crop): a convolutional U-Net. Absent means False: a family
    # with absolute positions learned for one grid (Latte, W.A.L.T). Not a protocol member, so a family
    # without it still satisfies ``isinstance(model, Denoiser)``.

    @classmethod
    def from_config(cls, cfg, conditions, in_channels: int) -> "Denoiser": ...

    @staticmethod
    def input_groups(cfg, conditions, in_channels: int) -> list[tuple[str, int]]:
        """The named channel groups of the input the model embeds (x_t first, then the conditions that
        enter along channels), in order: how a warm start maps one model's input weights onto another's."""
        ...

    def parameter_groups(self, stage: str) -> list[nn.Parameter]:
        """What trains in ``stage`` (one of STAGES): Video LDM's frozen spatial layers and VideoCrafter2's
        spatial-only fine-tune are configuration (``train.stage``)."""
        ...

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Conditioning] = None,
                 num_images: int = 0) -> torch.Tensor: ...
