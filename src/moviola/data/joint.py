"""Image-video joint training (Latte+IMG, W.A.L.T): each video of a batch gets ``n`` single frames taken
from other clips of the dataset, appended after its own frames.

Which clips and which frames is a pure function of ``(seed, step)``, like the rest of a batch,
so a resumed run sees the same images. An image keeps the label of the clip it came from: with
class conditioning, the labels become per frame, ``(B, T + n)`` (the video's label on its T
frames, each image's own label on its frame).

A caption is given per video, not per frame, so with text conditioning (``same_caption=True``) the
images of a video come from other clips with the same caption: the prompt the video's frames are
denoised under is then true of its images too (a still frame of "a red circle moving down" is a red
circle). Every caption then needs a second clip; :func:`caption_groups` says which do not.

The images are pixel frames (``item["video"]``, each encoded alone by the trainer) or, from a latent
cache (``item["latent"]``), latent frames that already are an image's encoding: any latent frame of a
frame-wise autoencoder, and only the first of a causal VAE (whose first latent frame encodes pixel
frame 0 alone; ``first_only=True``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def _caption(dataset, index: int) -> str:
    caption_of = getattr(dataset, "caption_of", None)  # cheap where the dataset knows it without reading the clip
    return caption_of(index) if caption_of is not None else dataset[index].get("caption", "")


def caption_groups(dataset) -> dict[str, list[int]]:
    """caption -> the indices of the clips that carry it, in order."""
    groups: dict[str, list[int]] = {}
    for i in range(len(dataset)):
        groups.setdefault(_caption(dataset, i), []).append(i)
    return groups


def extra_image_frames(dataset, indices: list[int], count: int, seed: int, step: int, *,
                       groups: Optional[dict[str, list[int]]] = None,
                       first_only: bool = False, also: Sequence[str] = ()) -> tuple:
    """``count`` frames per batch item from other clips: images (B, C, count, H, W) and labels (B, count)
    (None when the items carry no label). ``groups`` (:func:`caption_groups`): take them from clips with
    the item's caption. The images are ``item["latent"]`` frames when the dataset holds latents.

    ``also``: other per-frame tensors of the items (an upsampler's cached ``low_latent``), taken at the same
    clips and frames; then a third element, ``{key: (B, C', count, H', W')}``. They change no draw."""
    n = len(dataset)
    if n < 2:
        raise ValueError("image-video joint training takes its images from other clips: the dataset has one")
    g = torch.Generator().manual_seed(seed * 1_000_033 + step * 7_919 + 17)  # apart from the step's noise stream
    key = "latent" if "latent" in dataset[indices[0]] else "video"
    index_of_caption = {i: c for c, members in (groups or {}).items() for i in members} if groups else None
    images, labels, others = [], [], {name: [] for name in also}
    for own in indices:
        if groups is None:
            clips = (own + 1 + torch.randint(0, n - 1, (count,), generator=g)) % n  # any clip but its own
        else:
            pool = [i for i in groups[index_of_caption[own]] if i != own]
            if not pool:
                raise ValueError(f"clip {own} is the only one with the caption {index_of_caption[own]!r}: joint "
                                 "image training with text takes a video's images from other clips with its caption")
            clips = torch.tensor(pool)[torch.randint(0, len(pool), (count,), generator=g)]
        frames, ys, extra = [], [], {name: [] for name in also}
        for k in clips.tolist():
            item = dataset[k]
            video = item[key]  # (C, T, H, W)
            f = 0 if first_only else int(torch.randint(0, video.shape[1], (1,), generator=g))
            frames.append(video[:, f])  # (C, H, W)
            for name in also:
                extra[name].append(item[name][:, f])
            ys.append(int(item["label"]) if "label" in item else -1)
        images.append(torch.stack(frames, dim=1))  # (C, count, H, W)
        for name in also:
            others[name].append(torch.stack(extra[name], dim=1))
        labels.append(ys)
    has_labels = "label" in dataset[indices[0]]
    out = torch.stack(images), (torch.tensor(labels, dtype=torch.long) if has_labels else None)
    return (*out, {name: torch.stack(v) for name, v in others.items()}) if also else out
