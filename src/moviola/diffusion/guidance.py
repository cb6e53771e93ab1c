"""Classifier-free guidance, generic over every ``Conditioning`` field (Ho & Salimans 2022), and two extra terms:
Video LDM's context guidance and VideoCrafter's temporal guidance.

Temporal guidance (VideoCrafter, ``unconditional_guidance_scale_temporal``; lvdm/models/samplers/ddim.py,
``p_sample_ddim``): ``e ← e + s · (e(c) − e(c, no temporal attention))``, ``e`` the guided output, ``e(c)`` the
conditional branch and ``e(c, no temporal attention)`` the same model evaluated once more with its temporal
attention layers skipped (their input passes through; the temporal convolutions stay). ``s`` is an additive
weight, as in the official code: 0 (the default; the official None) is none. The model must offer
``skipping_temporal_attention(mask)`` (models/unet_video.py; ``supports_temporal_guidance``), a context manager
under which the examples where the (N,) bool mask holds skip them: the extra branch rides in the same batch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import torch

from moviola.conditioning.base import Conditioning


def _batch_timesteps(t: Union[int, torch.Tensor], x_t: torch.Tensor) -> torch.Tensor:
    """t as a (B,) or (B, T) long tensor on x_t's device; a number or a single value is expanded to the batch."""
    t = torch.as_tensor(t, device=x_t.device)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1 and x_t.shape[0] != 1):
        t = t.reshape(()).expand(x_t.shape[0])
    return t.long()


def classifier_free_guidance(
    model,
    x_t: torch.Tensor,
    t: Union[int, torch.Tensor],
    cond: Conditioning,
    uncond: Optional[Conditioning],
    scale: float,
    learned_sigma: bool = False,
    second_uncond: Optional[Conditioning] = None,
    second_scale: float = 1.0,
    temporal_scale: float = 0.0,
) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)`` on the mean channels, in one doubled batch.

    ``uncond`` defaults to ``cond.null()`` (every guidable field nulled). With ``learned_sigma``,
    the last C channels (the variance interpolation) come from the conditional half unchanged,
    as in GLIDE / DiT / Latte. ``scale == 1`` returns exactly the conditional prediction and
    skips the unconditional pass.

    ``second_uncond`` with ``second_scale != 1`` adds a second guidance term on the fields it nulls,
    ``(second_scale - 1) * (cond - second_uncond)`` (Video LDM's context guidance: ``cond`` with its
    given frames dropped): one more branch in the same batch. With ``second_scale == 1`` (or no
    ``second_uncond``) the result is the one above, computed the same way.

    ``temporal_scale`` s != 0 adds VideoCrafter's temporal guidance ``s · (cond − cond without temporal attention)``
    (module docstring): one more branch, the conditional one, last in the batch, run with its temporal attention
    skipped. With s == 0 nothing changes.
    """
    t = _batch_timesteps(t, x_t)
    second = second_uncond is not None and second_scale != 1.0
    temporal = temporal_scale != 0.0
    if scale == 1.0 and not second and not temporal:
        return model(x_t, t, cond)
    branches = [cond]
    if scale != 1.0:
        branches.append(cond.null() if uncond is None else uncond)
    if second:
        branches.append(second_uncond)
    if temporal:
        branches.append(cond)  # the conditional branch again, without temporal attention
    B, C, k = x_t.shape[0], x_t.shape[1], len(branches)
    if temporal:
        skip = torch.zeros(k * B, dtype=torch.bool, device=x_t.device)
        skip[(k - 1) * B:] = True  # (k·B,): the last branch skips the temporal attention
        with model.skipping_temporal_attention(skip):
            out = model(torch.cat([x_t] * k), torch.cat([t] * k), Conditioning.cat(branches))
    else:
        out = model(torch.cat([x_t] * k), torch.cat([t] * k), Conditioning.cat(branches))
    out_c = out[:B]  # (k·B, ...) -> the conditional part, then the unconditional one(s)
    mean_c = out_c[:, :C]
    guided = mean_c
    if scale != 1.0:
        mean_u = out[B:2 * B, :C]
        guided = mean_u + scale * (mean_c - mean_u)
    if second:
        at = (k - 2 if temporal else k - 1) * B  # the branch without frames
        guided = guided + (second_scale - 1.0) * (mean_c - out[at:at + B, :C])
    if temporal:
        guided = guided + temporal_scale * (mean_c - out[(k - 1) * B:, :C])
    if learned_sigma:
        return torch.cat([guided, out_c[:, C:]], dim=1)
    if out.shape[1] != C:
        raise ValueError(f"model returned {out.shape[1]} channels for x with {C}; pass learned_sigma=True "
                         "if the model learns its variance")
    return guided


def guided_model_fn(
    model,
    cond: Conditioning,
    uncond: Optional[Conditioning],
    scale: float,
    learned_sigma: bool = False,
    self_condition: bool = False,
    second_uncond: Optional[Conditioning] = None,
    second_scale: float = 1.0,
    temporal_scale: float = 0.0,
) -> Callable[..., torch.Tensor]:
    """A ``model_fn(x_t, t)`` for ``samplers.sample`` that applies classifier-free guidance.

    t may be a number, a (B,) or a (B, T) tensor. A single value is expanded to the batch.
    With ``self_condition`` it is ``model_fn(x_t, t, state)``: the sampler's previous x0 estimate
    (``state.pred_x0``; zeros at the first step, as self-conditioned training's first pass) goes
    into ``self_cond`` of every branch, so guidance is on the other fields only. ``second_uncond``
    and ``second_scale``: a second guidance term; ``temporal_scale``: temporal guidance (``classifier_free_guidance``).
    """
    extra = {} if temporal_scale == 0.0 else {"temporal_scale": temporal_scale}
    if not self_condition:
        def model_fn(x_t: torch.Tensor, t: Union[int, torch.Tensor]) -> torch.Tensor:
            return classifier_free_guidance(model, x_t, t, cond, uncond, scale, learned_sigma,
                                            second_uncond, second_scale, **extra)
        return model_fn
    if uncond is None and scale != 1.0:
        uncond = cond.null()  # before self_cond is set: the estimate is not nulled

    def self_conditioned_fn(x_t: torch.Tensor, t: Union[int, torch.Tensor], state) -> torch.Tensor:
        prev = state.pred_x0 if state.pred_x0 is not None else torch.zeros_like(x_t)
        c = dataclasses.replace(cond, self_cond=prev)
        u = None if uncond is None else dataclasses.replace(uncond, self_cond=prev)
        s = None if second_uncond is None else dataclasses.replace(second_uncond, self_cond=prev)
        return classifier_free_guidance(model, x_t, t, c, u, scale, learned_sigma, s, second_scale, **extra)
    return self_conditioned_fn
