"""What is learned from: Moving Shapes, folders of videos or images, joint image frames, latent caches."""
from __future__ import annotations


def check_data(cfg) -> None:
    """Refusals a ``data:`` section earns before anything is built: a ConfigError naming the keys."""
    from moviola.config import ConfigError

    clips = ("folder", "frames", "ucf101")  # datasets of longer videos a clip is cut from
    if cfg.clip_start != "first" and cfg.dataset not in clips:
        raise ConfigError(f"data.clip_start={cfg.clip_start} picks where a clip starts in a video file: it applies to "
                          f"data.dataset=folder, frames or ucf101, not {cfg.dataset} (leave it at first)")
    if cfg.dataset in ("frames", "ucf101") and not cfg.root:
        raise ConfigError(f"data.dataset={cfg.dataset} needs data.root (a folder of "
                          f"{'frame folders' if cfg.dataset == 'frames' else 'UCF-101 class folders'})")
    if getattr(cfg, "captions", None) and cfg.dataset not in ("folder", "images", "frames"):
        raise ConfigError(f"data.captions names a caption manifest of a folder: it applies to data.dataset=folder, "
                          f"images or frames, not {cfg.dataset}")
    if cfg.dataset != "ucf101" and (getattr(cfg, "split_file", None) or getattr(cfg, "split", "train") != "train"
                                    or getattr(cfg, "ucf_split", 1) != 1):
        raise ConfigError(f"data.split, data.ucf_split and data.split_file choose a UCF-101 split list: they apply "
                          f"to data.dataset=ucf101, not {cfg.dataset}")
    if cfg.dataset == "ucf101" and getattr(cfg, "ucf_split", 1) not in (1, 2, 3):
        raise ConfigError(f"data.ucf_split={cfg.ucf_split}: UCF-101 has official splits 1, 2 and 3")
    if cfg.dataset == "shapes" and not cfg.bounce:  # the object must stay inside for the whole span of motion
        from moviola.data.shapes import SIZES, max_frames_without_bounce, span
        from moviola.data.strides import strides_of

        if cfg.size not in SIZES:
            return  # MovingShapes names the size
        limit, stride = max_frames_without_bounce(cfg.size), max(strides_of(cfg))
        if stride > 1 and span(cfg.frames, stride) > limit:
            key = "data.frame_strides" if getattr(cfg, "frame_strides", None) else "data.frame_stride"
            raise ConfigError(
                f"data.frames={cfg.frames} at frame stride {stride} ({key}) spans (frames - 1) * stride + 1 = "
                f"{span(cfg.frames, stride)} frames of Moving Shapes motion, more than the {limit} that fit on the "
                f"canvas without bounce: set data.bounce=true, or use at most {(limit - 1) // stride + 1} frames "
                f"(or a smaller stride)")


def build_dataset(cfg, split: str = "train"):
    """The dataset a ``data:`` section (DataConfig) describes."""
    check_data(cfg)
    strides = getattr(cfg, "frame_strides", None)
    if cfg.dataset == "shapes":
        from moviola.data.shapes import MovingShapes

        return MovingShapes(split=split, count=cfg.count, size=cfg.size, frames=cfg.frames, seed=cfg.seed,
                            bounce=cfg.bounce, stride=cfg.frame_stride, strides=strides,
                            palette=None if getattr(cfg, "palette", None) is None else cfg.palette.colours())
    if cfg.dataset == "images":  # image diffusion: one-frame videos (data.frames must be 1)
        from moviola.data.folders import ImageFolder

        return ImageFolder(cfg.root, size=cfg.size, manifest=getattr(cfg, "captions", None) or None)
    from moviola.data.folders import UCF101, FrameFolder, VideoFolder

    clips = dict(frames=cfg.frames, stride=cfg.frame_stride, size=cfg.size, random_offset=cfg.clip_start == "random",
                 offset_seed=cfg.seed, strides=strides, stride_seed=cfg.seed)
    if cfg.dataset == "ucf101":
        return UCF101(cfg.root, split=cfg.split, fold=cfg.ucf_split, split_file=cfg.split_file, **clips)
    kind = FrameFolder if cfg.dataset == "frames" else VideoFolder
    return kind(cfg.root, manifest=getattr(cfg, "captions", None) or None, **clips)


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
