"""Image-video joint training (Latte+IMG): each video of a batch gets ``n`` single frames taken
from other clips of the dataset, appended after its own frames.

Which clips and which frames is a pure function of ``(seed, step)``, like the rest of a batch,
so a resumed run sees the same images. An image keeps the label of the clip it came from: with
class conditioning, the labels become per frame, ``(B, T + n)`` (the video's label on its T
frames, each image's own label on its frame).
"""
from __future__ import annotations

from typing import Optional

import torch


def extra_image_frames(dataset, indices: list[int], count: int, seed: int,
                       step: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``count`` frames per batch item from other clips: images (B, C, count, H, W) and labels (B, count)
    (None when the items carry no label)."""
    n = len(dataset)
    if n < 2:
        raise ValueError("image-video joint training takes its images from other clips: the dataset has one")
    g = torch.Generator().manual_seed(seed * 1_000_033 + step * 7_919 + 17)  # apart from the step's noise stream
    images, labels = [], []
    for own in indices:
        clips = (own + 1 + torch.randint(0, n - 1, (count,), generator=g)) % n  # any clip but its own
        frames, ys = [], []
        for k in clips.tolist():
            item = dataset[k]
            video = item["video"]  # (C, T, H, W)
            f = int(torch.randint(0, video.shape[1], (1,), generator=g))
            frames.append(video[:, f])  # (C, H, W)
            ys.append(int(item["label"]) if "label" in item else -1)
        images.append(torch.stack(frames, dim=1))  # (C, count, H, W)
        labels.append(ys)
    has_labels = "label" in dataset[indices[0]]
    return torch.stack(images), (torch.tensor(labels, dtype=torch.long) if has_labels else None)
