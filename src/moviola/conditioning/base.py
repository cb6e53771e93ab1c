"""The one dataclass that carries every condition a denoiser can take.

Every field is optional. A model declares the fields it accepts (``accepts``); passing
another one is a ``ValueError`` naming the field and the model (see ``check_accepted``).

A *null* condition (what classifier-free guidance compares against) is expressed in the
same dataclass: ``labels == -1`` is the null class, an all-False ``text_mask`` row is the
empty prompt, an all-zero ``context_mask`` row means "no context frames given".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Iterable, Optional

import torch

NULL_LABEL = -1  # the class label that means "no class" (dropped for guidance)


@dataclass
class Conditioning:
    labels: Optional[torch.Tensor] = None  # (B,) int64, or (B, T) per frame; NULL_LABEL = unconditional
    text: Optional[torch.Tensor] = None  # (B, L, D) token embeddings
    text_mask: Optional[torch.Tensor] = None  # (B, L) bool, True = a real token
    image_tokens: Optional[torch.Tensor] = None  # (B, L_img, D_img)
    context: Optional[torch.Tensor] = None  # (B, C, T, H, W) given frames (latent space)
    context_mask: Optional[torch.Tensor] = None  # (B, 1, T, 1, 1) or (B, 1, T, H, W), 1 = given
    fps: Optional[torch.Tensor] = None  # (B,)
    low_res: Optional[torch.Tensor] = None  # (B, C, T, H/2, W/2) the low-resolution latent to upsample
    noise_level: Optional[torch.Tensor] = None  # (B,) super-resolution noise augmentation level
    self_cond: Optional[torch.Tensor] = None  # (B, C, T, H, W) previous x0 estimate

    def present(self) -> list[str]:
        """Names of the fields that are set."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def batch_size(self) -> Optional[int]:
        for name in self.present():
            return getattr(self, name).shape[0]
        return None

    def map(self, fn) -> "Conditioning":
        """Apply ``fn`` to every tensor that is set."""
        return Conditioning(**{f.name: (None if (v := getattr(self, f.name)) is None else fn(v))
                               for f in fields(self)})

    def to(self, device=None, dtype=None) -> "Conditioning":
        def move(v: torch.Tensor) -> torch.Tensor:
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)
        return self.map(move)

    def index(self, idx) -> "Conditioning":
        return self.map(lambda v: v[idx])

    def repeat_interleave(self, n: int) -> "Conditioning":
        return self.map(lambda v: v.repeat_interleave(n, dim=0))

    @staticmethod
    def cat(conds: Iterable["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch; every part must set the same fields."""
        conds = list(conds)
        names = conds[0].present()
        for c in conds[1:]:
            if c.present() != names:
                raise ValueError(f"cannot concatenate conditionings with fields {names} and {c.present()}")
        return Conditioning(**{n: torch.cat([getattr(c, n) for c in conds]) for n in names})

    def null(self, which: Optional[Iterable[str]] = None) -> "Conditioning":
        """The same batch with the named fields (default: all guidable ones) set to their null value."""
        which = set(self.present() if which is None else which)
        out = dataclasses.replace(self)
        for name in which:
            v = getattr(self, name)
            if v is None:
                continue
            if name == "labels":
                out.labels = torch.full_like(v, NULL_LABEL)
            elif name == "text":
                out.text = torch.zeros_like(v)
                out.text_mask = torch.zeros_like(self.text_mask) if self.text_mask is not None else None
            elif name == "text_mask":
                out.text_mask = torch.zeros_like(v)
            elif name in ("context", "image_tokens", "self_cond"):
                setattr(out, name, torch.zeros_like(v))
                if name == "context" and self.context_mask is not None:
                    out.context_mask = torch.zeros_like(self.context_mask)
            elif name == "context_mask":
                out.context_mask = torch.zeros_like(v)
            # fps, low_res and noise_level are not guidance targets: they keep their values.
        return out

    def drop(self, keep: torch.Tensor, which: Iterable[str]) -> "Conditioning":
        """Per-example dropout: rows where ``keep`` is False get the null value of ``which``."""
        nulled = self.null(which)
        def pick(name):
            a, b = getattr(self, name), getattr(nulled, name)
            if a is None:
                return None
            k = keep.to(a.device).view(-1, *([1] * (a.dim() - 1)))
            return torch.where(k, a, b)
        return Conditioning(**{f.name: pick(f.name) for f in fields(self)})


def check_accepted(cond: Optional[Conditioning], accepted: Iterable[str], model_name: str) -> None:
    """Raise a ValueError naming each field the model cannot take."""
    if cond is None:
        return
    accepted = set(accepted)
    bad = [n for n in cond.present() if n not in accepted]
    if bad:
        raise ValueError(f"{model_name} does not accept conditioning field(s) {bad}; "
                         f"it accepts {sorted(accepted) or 'none'}")
