"""What is learned from: Moving Shapes, folders of videos or images, joint image frames, latent caches."""
from __future__ import annotations


def build_dataset(cfg, split: str = "train"):
    """The dataset a ``data:`` section (DataConfig) describes."""
    if cfg.clip_start != "first" and cfg.dataset != "folder":
        from moviola.config import ConfigError

        raise ConfigError(f"data.clip_start={cfg.clip_start} picks where a clip starts in a video file: it applies to "
                          f"data.dataset=folder, not {cfg.dataset} (leave it at first)")
    if cfg.dataset == "shapes":
        from moviola.data.shapes import MovingShapes

        return MovingShapes(split=split, count=cfg.count, size=cfg.size, frames=cfg.frames, seed=cfg.seed,
                            bounce=cfg.bounce)
    if cfg.dataset == "images":  # image diffusion: one-frame videos (data.frames must be 1)
        from moviola.data.folders import ImageFolder

        return ImageFolder(cfg.root, size=cfg.size)
    from moviola.data.folders import VideoFolder

    return VideoFolder(cfg.root, frames=cfg.frames, stride=cfg.frame_stride, size=cfg.size,
                       random_offset=cfg.clip_start == "random", offset_seed=cfg.seed)


def known_classes(cfg) -> "tuple[str, int] | None":
    """The name and class count of a ``data:`` section's dataset, where it has a fixed one (Moving Shapes:
    48), read without building the dataset."""
    if cfg.dataset == "shapes":
        from moviola.data.shapes import MovingShapes

        return MovingShapes.name, MovingShapes.num_classes
    return None


def check_classes(conditions, name: str, classes: int) -> None:
    """A class-conditional run must take exactly the dataset's classes (or none): a ConfigError otherwise."""
    from moviola.config import ConfigError

    if classes and conditions.num_classes not in (0, classes):
        raise ConfigError(f"conditions.num_classes={conditions.num_classes} does not fit {name}, which has {classes} "
                          f"classes (use {classes}, or 0 for an unconditional model)")
