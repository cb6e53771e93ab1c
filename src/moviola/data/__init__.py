"""What is learned from: Moving Shapes, folders of videos or images, joint image frames, latent caches."""
from __future__ import annotations


def build_dataset(cfg, split: str = "train"):
    """The dataset a ``data:`` section (DataConfig) describes."""
    if cfg.dataset == "shapes":
        from moviola.data.shapes import MovingShapes

        return MovingShapes(split=split, count=cfg.count, size=cfg.size, frames=cfg.frames, seed=cfg.seed,
                            bounce=cfg.bounce)
    if cfg.dataset == "images":  # image diffusion: one-frame videos (data.frames must be 1)
        from moviola.data.folders import ImageFolder

        return ImageFolder(cfg.root, size=cfg.size)
    from moviola.data.folders import VideoFolder

    return VideoFolder(cfg.root, frames=cfg.frames, stride=cfg.frame_stride, size=cfg.size)
