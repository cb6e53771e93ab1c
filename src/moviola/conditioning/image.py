"""Frozen image encoders: images ``(B, 3, H, W)`` in [-1, 1] -> image tokens ``(B, N, D)``, float32.

:class:`CLIPImageEncoder` loads a CLIP vision tower from a **local** transformers directory (nothing is fetched
at run time): a ``CLIPVisionModel`` or ``CLIPVisionModelWithProjection`` directory, a full ``CLIPModel``
directory (its vision tower is used), or a diffusers pipeline root with ``image_encoder/`` (and its processor in
``feature_extractor/``). It returns ALL tokens of the last layer (``last_hidden_state``: the class token and
every patch token, no post-LayerNorm, no pooling, no projection), as VideoCrafter's
``FrozenOpenCLIPImageEmbedderV2`` does before its Resampler.

The images are resized and normalized as the model's image processor says (``preprocessor_config.json``:
``size``, ``crop_size``, ``resample``, ``image_mean``, ``image_std``, the ``do_*`` switches; without one:
CLIP's mean and std, bicubic, resized and center-cropped to the model's ``image_size``), in torch, so batches
on any device work: shortest edge to ``size`` (antialiased bicubic or bilinear, clamped to the pixel range as
PIL does), center crop, ``(x - mean) / std``. An image already at the crop size passes untouched except the
normalization, so the tokens then equal the model's on the processor's ``pixel_values``.

:func:`image_encoder_fingerprint` hashes an encoder's content (config, weights, preprocessor config) for caches
keyed by it, as ``conditioning.text.encoder_fingerprint`` does for text; :func:`build_image_encoder` is the
factory (``kind``: ``"clip"`` or ``"none"``). :func:`build_image` is a run's encoder (``image.encoder``, for a run
with ``conditions.image``), as ``conditioning.text.build_text`` is its text encoder: training encodes each clip's
frame 0 with it, the pipeline the given first frame; :func:`check_image_encoder` checks the key and the token width
against ``model.image_token_dim`` from the encoder's config alone, before any weights load.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's (transformers' OPENAI_CLIP_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# PIL's resampling filters by number, as preprocessor_config.json stores them
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_APPROXIMATED = {1: "lanczos", 4: "box", 5: "hamming"}  # done as bicubic, with a warning
IMAGE_ENCODER_KINDS = ("clip", "none")


class ImageEncoderError(ValueError):
    """An image encoder that cannot be used; the message says what to give instead."""


def check_images(images: torch.Tensor, channels: int = 3) -> None:
    """A one-line ValueError unless ``images`` is a floating (B, channels, H, W) tensor."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != channels \
            or not images.is_floating_point():
        got = (f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor)
               else type(images).__name__)
        raise ValueError(f"images must be a float tensor of shape (B, {channels}, H, W) in [-1, 1], got {got}")


# ---------------------------------------------------------------- locating the files
def resolve_image_encoder_path(path: "str | Path") -> Path:
    """The directory holding the vision model's config.json (a diffusers root's ``image_encoder/``)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ImageEncoderError(f"image encoder {str(path)!r} is not a local directory; give the directory of a "
                                "transformers CLIP vision model (config.json and weights)")
    if (p / "config.json").is_file():
        return p
    if (p / "image_encoder" / "config.json").is_file():
        return p / "image_encoder"
    raise ImageEncoderError(f"image encoder {p} has no config.json (nor image_encoder/config.json): expected a "
                            "transformers CLIP vision model directory")


def _preprocessor_file(model_dir: Path) -> Optional[Path]:
    for candidate in (model_dir / "preprocessor_config.json", model_dir.parent / "feature_extractor" /
                      "preprocessor_config.json"):
        if candidate.is_file():
            return candidate
    return None


def _vision_config(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    kind = cfg.get("model_type", "")
    if kind == "clip":
        return {**cfg.get("vision_config", {}), "model_type": "clip", "architectures": cfg.get("architectures")}
    if kind != "clip_vision_model":
        raise ImageEncoderError(f"image encoder {model_dir}: model_type {kind!r} is not a CLIP vision model "
                                "(expected clip_vision_model or clip)")
    return cfg


def image_encoder_fingerprint(path: "str | Path") -> str:
    """A hash of an image encoder's content: its config, weight and preprocessor files (names, sizes, bytes)."""
    model_dir = resolve_image_encoder_path(path)
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin")))
    processor = _preprocessor_file(model_dir)
    if processor is not None:
        files.append(processor)
    h = hashlib.sha256(b"moviola-image-encoder\0")
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- preprocessing
def _edge_or_box(value, what: str, square_default: bool) -> tuple[str, tuple[int, ...]]:
    """A processor ``size``/``crop_size`` -> ("short", (s,)) or ("box", (h, w))."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ("box", (value, value)) if square_default else ("short", (value,))
    if isinstance(value, dict):
        if set(value) == {"shortest_edge"}:
            return "short", (int(value["shortest_edge"]),)
        if {"height", "width"} <= set(value) and not set(value) - {"height", "width"}:
            return "box", (int(value["height"]), int(value["width"]))
    raise ImageEncoderError(f"preprocessor_config.json: unsupported {what} {value!r} (supported: an int, "
                            "{'shortest_edge': s} or {'height': h, 'width': w})")


class ImagePreprocessor:
    """A CLIP image processor's steps on batched tensors: ``preprocessor(images in [-1, 1]) -> pixel_values``."""

    def __init__(self, config: dict, image_size: int):
        self.do_resize = bool(config.get("do_resize", True))
        self.do_center_crop = bool(config.get("do_center_crop", True))
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(config.get("do_normalize", True))
        self.size = _edge_or_box(config.get("size", {"shortest_edge": image_size}), "size", square_default=False)
        self.crop_size = _edge_or_box(config.get("crop_size", {"height": image_size, "width": image_size}),
                                      "crop_size", square_default=True)
        if self.do_center_crop and self.crop_size[0] != "box":
            raise ImageEncoderError(f"preprocessor_config.json: crop_size must give height and width, "
                                    f"got {config.get('crop_size')!r}")
        resample = config.get("resample", 3)
        if resample in _APPROXIMATED:
            warnings.warn(f"image processor resample={resample} ({_APPROXIMATED[resample]}) is done as bicubic")
        elif resample not in _RESAMPLE:
            raise ImageEncoderError(f"preprocessor_config.json: unknown resample {resample!r}")
        self.mode = _RESAMPLE.get(resample, "bicubic")
        mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
        mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
        std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(s) for s in std]
        if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
            raise ImageEncoderError(f"preprocessor_config.json: image_mean/image_std must be 3 values (std > 0), "
                                    f"got {mean!r}, {std!r}")
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_dir(cls, model_dir: Path, image_size: int) -> "ImagePreprocessor":
        path = _preprocessor_file(model_dir)
        return cls({} if path is None else json.loads(path.read_text()), image_size)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The size after resizing (the processor's rule: the short edge to s, the long one truncated)."""
        kind, values = self.size
        if kind == "box":
            return values
        s = values[0]
        if width <= height:
            return int(s * height / width), s
        return s, int(s * width / height)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.do_center_crop:
            return self.crop_size[1]
        return self.resized_size(height, width) if self.do_resize else (height, width)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [-1, 1] -> pixel_values (B, 3, h, w), float32."""
        check_images(images)
        x = (images.float() + 1) / 2  # [0, 1]: the processor's uint8 pixels / 255
        if self.do_resize:
            size = self.resized_size(*x.shape[-2:])
            if size != tuple(x.shape[-2:]):
                if self.mode == "nearest":
                    x = F.interpolate(x, size=size, mode="nearest")
                else:  # antialiased (PIL-like) filters, clamped to the pixel range as PIL's uint8 output is
                    x = F.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=True)
                    x = x.clamp(0, 1)
        if self.do_center_crop:
            x = _center_crop(x, *self.crop_size[1])
        if not self.do_rescale:
            x = x * 255.0
        elif not math.isclose(self.rescale_factor, 1 / 255, rel_tol=1e-9):
            x = x * (255.0 * self.rescale_factor)
        if self.do_normalize:
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The processor's center crop: top = (H - h) // 2, left = (W - w) // 2; a smaller image is zero-padded (black)
    around its center first."""
    H, W = x.shape[-2:]
    if H < height or W < width:
        ph, pw = max(height - H, 0), max(width - W, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        H, W = x.shape[-2:]
    top, left = (H - height) // 2, (W - width) // 2
    return x[..., top:top + height, left:left + width]


# ---------------------------------------------------------------- the encoder
class CLIPImageEncoder(nn.Module):
    """A frozen CLIP vision tower: ``encoder(images (B, 3, H, W) in [-1, 1]) -> tokens (B, N, dim)`` float32, all
    of the last layer's tokens (N = 1 + patches). ``preprocess(images)`` gives the ``pixel_values`` it feeds."""

    def __init__(self, path: "str | Path"):
        super().__init__()
        import transformers

        transformers.utils.logging.disable_progress_bar()
        self.path = resolve_image_encoder_path(path)
        cfg = _vision_config(self.path)
        architectures = cfg.get("architectures") or []
        cls = (transformers.CLIPVisionModelWithProjection if "CLIPVisionModelWithProjection" in architectures
               else transformers.CLIPVisionModel)
        verbosity = transformers.utils.logging.get_verbosity()
        transformers.utils.logging.set_verbosity_error()  # a full CLIPModel's text tower is reported unused
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model = cls.from_pretrained(str(self.path), local_files_only=True).eval()
        finally:
            transformers.utils.logging.set_verbosity(verbosity)
        self.model.requires_grad_(False)
        vision = self.model.config
        self.dim = int(vision.hidden_size)
        self.preprocessor = ImagePreprocessor.from_dir(self.path, int(vision.image_size))
        self._patch, self._image_size = int(vision.patch_size), int(vision.image_size)
        self._fingerprint: Optional[str] = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = image_encoder_fingerprint(self.path)
        return self._fingerprint

    def num_tokens(self, height: Optional[int] = None, width: Optional[int] = None) -> int:
        """Tokens per image (class token + patches) for an input of that size (default: the model's)."""
        h, w = (self._image_size, self._image_size) if height is None else \
            self.preprocessor.output_size(height, width if width is not None else height)
        return 1 + (h // self._patch) * (w // self._patch)

    def train(self, mode: bool = True) -> "CLIPImageEncoder":
        return super().train(False)  # always frozen: no dropout

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocessor(images)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.preprocess(images)
        h, w = pixels.shape[-2:]
        if (h, w) != (self._image_size, self._image_size):
            raise ImageEncoderError(f"the preprocessed images are {h}×{w} but {self.path} takes "
                                    f"{self._image_size}×{self._image_size}: check its preprocessor_config.json")
        p = next(self.model.parameters())
        out = self.model(pixel_values=pixels.to(device=p.device, dtype=p.dtype))
        return out.last_hidden_state.float()


def image_encoder_width(path: "str | Path") -> int:
    """The width of an encoder's tokens (its vision tower's hidden size), from its config alone: no weights loaded."""
    import transformers

    model_dir = resolve_image_encoder_path(path)
    _vision_config(model_dir)  # a CLIP vision model, or refused by name
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # "you are using a clip model to instantiate clip_vision_model"
    try:
        return int(transformers.CLIPVisionConfig.from_pretrained(str(model_dir)).hidden_size)
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def build_image_encoder(kind: str, path: "Optional[str | Path]" = None,
                        device: "str | torch.device" = "cpu") -> Optional[CLIPImageEncoder]:
    """``"clip"``: a :class:`CLIPImageEncoder` from the local directory ``path``, on ``device``; ``"none"``:
    None (no image tokens)."""
    if kind == "none":
        if path is not None:
            raise ImageEncoderError(f"image encoder kind 'none' takes no path (got {str(path)!r}); use kind 'clip'")
        return None
    if kind == "clip":
        if path is None:
            raise ImageEncoderError("image encoder kind 'clip' needs path: the local directory of a transformers "
                                    "CLIP vision model")
        return CLIPImageEncoder(path).to(device)
    raise ImageEncoderError(f"unknown image encoder kind {kind!r}; known: {', '.join(IMAGE_ENCODER_KINDS)}")


def check_image_encoder(cfg) -> Path:
    """The image encoder directory of a run config that conditions on image tokens, checked without loading weights:
    ``image.encoder`` is set (``conditions.image`` needs it), is a CLIP vision model, and its token width is
    ``model.image_token_dim``. Each failure is a one-line ConfigError naming the keys."""
    from moviola.config import ConfigError

    cfg.require_image_encoder()
    try:
        path = resolve_image_encoder_path(cfg.image.encoder)
        width = image_encoder_width(path)
    except ImageEncoderError as e:
        raise ConfigError(f"image.encoder: {e}") from None
    dim = getattr(cfg.model, "image_token_dim", None)
    if width != dim:
        raise ConfigError(f"model.image_token_dim={dim} but image.encoder {path} gives {width}-wide tokens: set "
                          f"image.encoder to the encoder this model was trained with, or, for a new model, "
                          f"model.image_token_dim={width}")
    return path


def build_image(cfg, device: "str | torch.device" = "cpu") -> Optional[CLIPImageEncoder]:
    """The frozen image encoder of a run config that conditions on image tokens (``conditions.image``), on
    ``device``; None for another run. Checked (:func:`check_image_encoder`) before its weights load."""
    from moviola.config import ConfigError

    if not cfg.conditions.image:
        return None
    path = check_image_encoder(cfg)
    try:
        return build_image_encoder("clip", path, device)
    except ImageEncoderError as e:
        raise ConfigError(f"image.encoder: {e}") from None


__all__: Sequence[str] = ["CLIPImageEncoder", "CLIP_MEAN", "CLIP_STD", "IMAGE_ENCODER_KINDS", "ImageEncoderError",
                          "ImagePreprocessor", "build_image", "build_image_encoder", "check_image_encoder", "check_images",
                          "image_encoder_fingerprint", "image_encoder_width", "resolve_image_encoder_path"]
