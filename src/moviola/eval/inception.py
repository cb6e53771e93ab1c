"""The FID Inception-v3: TensorFlow's "2015-12-05" graph, in the layout of pytorch-fid's weights file.

FID and Inception Score are defined by one particular network: the Inception-v3 graph that
TensorFlow published as ``inception-2015-12-05.tgz`` and that the original FID code (TTUR) and the
original IS code (openai/improved-gan) load. pytorch-fid ported its weights to PyTorch as
``pt_inception-2015-12-05-6726825d.pth``; torch-fidelity ships the same bytes (same SHA-256) as
``weights-inception-2015-12-05-6726825d.pth``. torchvision's ImageNet Inception
(``inception_v3_google-*.pth``) is a different network and gives different, incomparable numbers.

``FIDInceptionV3`` reproduces that port so the file loads with exactly its key names and shapes
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_7c.branch_pool.bn.running_var``, ``fc.weight`` ...).
It differs from torchvision's Inception3 in four places, all copied from the TF graph:

- 1008 output classes, not 1000 (the TF graph keeps 8 unused slots);
- no auxiliary classifier (``AuxLogits``) and no dropout (inference only);
- the 3x3 average pools inside the A, C and first E blocks divide by the number of *real* pixels
  under the window (``count_include_pad=False``), as TF's ``avg_pool`` with SAME padding does;
- the last E block (``Mixed_7c``) pools with a 3x3 *max* pool, not an average pool.

Input contract (``FIDInceptionV3.forward``): uint8 images ``(N, 3, H, W)`` in 0..255, RGB. They are
scaled to [0, 1], resized to 299x299 with ``F.interpolate(mode="bilinear", align_corners=False)``
(pytorch-fid's resize; skipped when already 299x299 or when built with ``resize_input=False``),
then mapped to [-1, 1] by ``2x - 1`` (= ``x / 127.5 - 1`` on 0..255). The TF graph itself uses
``(x - 128) / 128`` and torch-fidelity a TF1-style resize; clean-fid resizes with PIL bicubic.
These choices move FID by small amounts, so compare numbers only within one convention.

Outputs: the 2048-d ``pool3`` features (global average pool after ``Mixed_7c``, what FID uses) and
1008 class logits computed as ``pool3 @ fc.weight.T`` *without* the fc bias. That is what the
original IS code does (it rebuilds the softmax from the weight input of ``softmax/logits/MatMul``
and never adds the bias) and what torch-fidelity's default IS feature (``logits_unbiased``) is;
``class_logits(pool3, bias=True)`` gives the biased logits if needed.

``load_inception(path)`` reads a local copy of the file (nothing is downloaded), checks its SHA-256
against the pinned value and loads it with ``torch.load(weights_only=True)``: only tensors and
plain containers are unpickled, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FEATURE_DIM",
    "FID_WEIGHTS_BYTES",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_SHA256",
    "FID_WEIGHTS_URL",
    "INPUT_SIZE",
    "MIN_INPUT_SIZE",
    "NUM_CLASSES",
    "FIDInceptionV3",
    "file_sha256",
    "load_inception",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILENAME)
# The file name carries the first 8 hex digits of the SHA-256 (torch.hub's convention). The full
# digest is the one pinned for this URL by snap-research/discoscene (models/inception_model.py)
# and recorded by several independent projects for both this file and torch-fidelity's copy.
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
FID_WEIGHTS_BYTES = 95_628_359  # only quoted in error messages: a truncated or HTML download stands out

INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # smaller inputs shrink to nothing before Mixed_7a's stride-2 convolutions
NUM_CLASSES = 1008
FEATURE_DIM = 2048


# ----------------------------------------------------------------------------- blocks


class BasicConv2d(nn.Module):
    """Convolution (no bias) + batch norm (TF's epsilon 1e-3) + ReLU: every layer of the network."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME-padded avg_pool averages only the real pixels under the window
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a); same as torchvision's."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class FIDInceptionC(nn.Module):
    """17x17 block (Mixed_6b..e) with factorized 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row = {"kernel_size": (1, 7), "padding": (0, 3)}
        col = {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], dim=1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a); same as torchvision's."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class FIDInceptionE(nn.Module):
    """8x8 block (Mixed_7b, Mixed_7c) with split 1x3 / 3x1 outputs.

    ``pool="max"`` for Mixed_7c: the TF graph max-pools there (most likely a slip in the original
    graph, but it is what the FID network computes).
    """

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], dim=1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], dim=1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max"
                  else _tf_avg_pool(x))
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], dim=1)


# ----------------------------------------------------------------------------- network


class FIDInceptionV3(nn.Module):
    """The FID / IS Inception-v3 (23,850,960 parameters), built in eval mode with frozen weights.

    ``forward(images)`` takes uint8 ``(N, 3, H, W)`` and returns ``(pool3, logits)``:
    ``(N, 2048)`` features and ``(N, 1008)`` bias-free class logits (see the module docstring).
    ``resize_input=False`` feeds images at their own size (at least 75x75); only for tests and
    experiments, since FID is defined at 299x299. Weights are random until loaded:
    use :func:`load_inception`.
    """

    def __init__(self, resize_input: bool = True) -> None:
        super().__init__()
        self.resize_input = bool(resize_input)
        self.weights_sha256: Optional[str] = None  # set by load_inception; goes into FeatureStats.meta
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()  # batch norm must use the stored statistics: there is nothing to train here

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` 0..255 -> float ``(N, 3, 299, 299)`` in [-1, 1] (pytorch-fid's order:
        scale to [0, 1], bilinear resize with ``align_corners=False``, then ``2x - 1``)."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8 in 0..255, got dtype {images.dtype}; convert [-1, 1] "
                             "pixels with moviola.eval.image_metrics.to_uint8_frames (round, not truncate)")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) RGB, got shape {tuple(images.shape)}")
        weight = self.Conv2d_1a_3x3.conv.weight
        x = images.to(device=weight.device, dtype=weight.dtype) / 255.0
        if self.resize_input and tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def pool3(self, x: torch.Tensor) -> torch.Tensor:
        """Float ``(N, 3, H, W)`` in [-1, 1], H and W >= 75 (299 for FID) -> ``(N, 2048)`` pool3 features."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected (N, 3, H, W) input, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"Inception-v3 needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}, "
                             f"got {tuple(x.shape[-2:])} (build the model with resize_input=True)")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (N, 64, 147, 147) at 299
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))                      # (N, 192, 71, 71)
        x = F.max_pool2d(x, kernel_size=3, stride=2)                       # (N, 192, 35, 35)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))                 # (N, 288, 35, 35)
        x = self.Mixed_6a(x)                                               # (N, 768, 17, 17)
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))  # (N, 768, 17, 17)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))                 # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))                                          # (N, 2048)

    def class_logits(self, pool3: torch.Tensor, bias: bool = False) -> torch.Tensor:
        """``(N, 2048)`` -> ``(N, 1008)``; ``bias=False`` (the IS convention) leaves out ``fc.bias``."""
        return F.linear(pool3, self.fc.weight, self.fc.bias if bias else None)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 ``(N, 3, H, W)`` -> ``(pool3 (N, 2048), bias-free logits (N, 1008))``."""
        pool3 = self.pool3(self.preprocess(images))
        return pool3, self.class_logits(pool3)


# ----------------------------------------------------------------------------- loading


def file_sha256(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def _where_to_get() -> str:
    return (f"download {FID_WEIGHTS_FILENAME} ({FID_WEIGHTS_BYTES:,} bytes, SHA-256 {FID_WEIGHTS_SHA256}) "
            f"from pytorch-fid's GitHub release: {FID_WEIGHTS_URL} (torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth is the same file)")


def _expected_digest(sha256: Optional[str]) -> str:
    if sha256 is None:
        return FID_WEIGHTS_SHA256
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex string or None, got {type(sha256).__name__}")
    digest = sha256.strip().lower()
    if not 8 <= len(digest) <= 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"sha256 must be 8 to 64 hex digits (a full digest or a prefix), got {sha256!r}")
    return digest


def _checked_state_dict(obj: object, model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, completed and checked against the model's keys and shapes."""
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{path}: expected a flat state dict of tensors (pytorch-fid's format), "
                         f"got {type(obj).__name__}")
    own = model.state_dict()
    # files written before BatchNorm had a batch counter have no num_batches_tracked (unused in eval)
    optional = {k for k in own if k.endswith(".num_batches_tracked")}
    missing = sorted(set(own) - set(obj) - optional)
    unexpected = sorted(set(obj) - set(own))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[:4]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:4]}")
    wrong = [f"{k}: file {tuple(obj[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in obj and obj[k].shape != own[k].shape]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {wrong[:3]}")
    if problems:
        raise ValueError(f"{path}: not the FID Inception state dict: " + "; ".join(problems))
    return {k: obj.get(k, own[k]) for k in own}


def load_inception(
    path: Union[str, Path],
    sha256: Optional[str] = None,
    *,
    device: Union[str, torch.device] = "cpu",
    resize_input: bool = True,
) -> FIDInceptionV3:
    """The FID Inception from a local ``pt_inception-2015-12-05-6726825d.pth``, in eval mode.

    ``path`` is the file, or a directory holding it under its release name. The file's SHA-256
    must start with ``sha256`` (a full digest or a prefix of at least 8 hex digits); the default
    is the pinned digest of pytorch-fid's release. Pass another digest to load a file you trust
    that differs (it must still have this network's keys and shapes). The file is read with
    ``torch.load(weights_only=True)``, so a pickle that tries to build arbitrary objects is refused.
    The model's ``weights_sha256`` attribute records the file's digest.
    """
    expected = _expected_digest(sha256)
    path = Path(path)
    if path.is_dir():
        path = path / FID_WEIGHTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"no Inception weights at {str(path)!r}: {_where_to_get()}. "
                                "Nothing is downloaded at run time; pass the local path.")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        hint = " It starts with '<': an HTML page saved under the .pth name?" if head.startswith(b"<") else ""
        raise ValueError(f"{path}: SHA-256 {actual} ({size:,} bytes) does not match the expected "
                         f"{expected}.{hint} The FID network must be exactly pytorch-fid's weights: "
                         f"{_where_to_get()}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as e:
        # UnpicklingError: a global outside the allow-list; RuntimeError / EOFError: a broken archive.
        # torch's weights-only message is boilerplate (which suggests weights_only=False) around
        # one paragraph naming the actual problem: quote that paragraph only.
        parts = [p.strip() for p in str(e).split("\n\n") if p.strip()]
        detail = parts[1] if isinstance(e, pickle.UnpicklingError) and len(parts) >= 3 else (parts or [""])[0]
        raise ValueError(f"{path}: refused by torch.load(weights_only=True), which unpickles only tensors "
                         f"and plain containers (a corrupt file, or a pickle of other objects): "
                         f"{type(e).__name__}: {detail}") from None
    model = FIDInceptionV3(resize_input=resize_input)
    model.load_state_dict(_checked_state_dict(obj, model, path), strict=True)
    model.weights_sha256 = actual
    return model.to(device)
