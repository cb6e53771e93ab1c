"""The I3D feature network of FVD, and the loader of its weights (local files only, checksummed).

Two detectors are in use for FVD, and their numbers must not be mixed (see
``docs/evaluation.md``):

- ``i3d_torchscript.pt``: StyleGAN-V's TorchScript port of the tf.hub I3D (Kinetics-400), which
  Latte reports with. It takes uint8 ``(B, 3, T, H, W)``, resizes to 224 and rescales itself
  (``rescale=True, resize=True, return_features=True``) and returns 400-d features.
- A state dict in the layout of the widely used PyTorch I3D (``InceptionI3d`` below: keys such
  as ``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``),
  e.g. the ``i3d_pretrained_400.pt`` of TATS / cd-fvd's "i3d" option. Here moviola does the
  preprocessing: bilinear resize to 224, ``2x/255 - 1``, and the 400 logits averaged over time.

The network below is written from the I3D paper's architecture (Carreira & Zisserman 2017,
Inception-v1 inflated to 3-D, TensorFlow "SAME" padding); its parameter names follow that
common layout so the files people have load as they are. Nothing is downloaded: a missing file
is an error that says where the file comes from.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

# Checksums of the detector files people have, by file name. The pin below is the SHA-256 that
# third-party FVD code pins for StyleGAN-V's file (not verified against the file here: nothing can
# be downloaded); an explicit ``sha256=`` overrides it.
KNOWN_DETECTORS = {
    "i3d_torchscript.pt": dict(
        sha256="bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2",
        source="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1 (StyleGAN-V's FVD detector)"),
}
WHERE = ("FVD needs a local I3D file: StyleGAN-V's i3d_torchscript.pt (the detector Latte reports with; "
         "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1), or a PyTorch I3D state dict such as "
         "TATS' i3d_pretrained_400.pt; download it on a machine with internet and pass its path")


class ChecksumError(ValueError):
    """A weights file whose hash is not the expected one."""


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one axis: (front, back), the extra pixel at the back."""
    pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    (tf, tb), (hf, hb), (wf, wb) = (_same_pad(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """Conv3d with "SAME" padding, then batch norm and ReLU (the logits unit has bias, no norm, no ReLU)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1),
                 norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # zero padding is safe: the input comes out of a ReLU, so 0 never wins over a real maximum
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1×1; 1×1 → 3×3; 1×1 → 3×3; 3×3 max-pool → 1×1; concatenated on channels."""

    def __init__(self, cin: int, c: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3a, self.b3b = MaxPoolSame((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (name, in channels, branch widths) of the inception modules, in order
_MIXED = (("Mixed_3b", 192, (64, 96, 128, 16, 32, 32)), ("Mixed_3c", 256, (128, 128, 192, 32, 96, 64)),
          ("Mixed_4b", 480, (192, 96, 208, 16, 48, 64)), ("Mixed_4c", 512, (160, 112, 224, 24, 64, 64)),
          ("Mixed_4d", 512, (128, 128, 256, 24, 64, 64)), ("Mixed_4e", 512, (112, 144, 288, 32, 64, 64)),
          ("Mixed_4f", 528, (256, 160, 320, 32, 128, 128)), ("Mixed_5b", 832, (256, 160, 320, 32, 128, 128)),
          ("Mixed_5c", 832, (384, 192, 384, 48, 128, 128)))


class InceptionI3d(nn.Module):
    """I3D: ``model(x (B, 3, T, H, W) in [-1, 1]) -> logits (B, num_classes)``, averaged over time.

    The final average pool is 2×7×7 (stride 1) as in the original at 16×224×224 input; smaller
    inputs (tests) pool over what is left.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        for name, cin, widths in _MIXED:
            setattr(self, name, InceptionModule(cin, widths))
            if name == "Mixed_3c":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            elif name == "Mixed_4f":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.logits = Unit3D(1024, num_classes, norm=False, relu=False, bias=True)
        self._order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
                       "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
                       "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        kernel = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, kernel, stride=1)  # (B, 1024, T', H', W')
        x = self.logits(x)  # (B, classes, T', H', W'); dropout is the identity in eval
        return x.mean(dim=(2, 3, 4))  # (B, classes): the logits averaged over time (and what is left of space)


@dataclass
class Detector:
    """A loaded FVD detector: ``detector(videos uint8 (B, 3, T, H, W)) -> features (B, D) float64``."""

    network: nn.Module
    kind: str  # "torchscript" (StyleGAN-V's file) or "state_dict" (InceptionI3d)
    sha256: str
    name: str
    resize: int = 224  # the frame size the network sees (state-dict detectors; tests make it small)
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dtype != torch.uint8:
            raise ValueError(f"the FVD detector takes uint8 videos in 0..255, got {videos.dtype} "
                             "(floats in [0, 1] or [-1, 1] silently give wrong FVDs)")
        if videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError(f"expected (B, 3, T, H, W) videos, got shape {tuple(videos.shape)}")
        videos = videos.to(self.device)
        if self.kind == "torchscript":
            out = self.network(videos, rescale=True, resize=True, return_features=True)
        else:
            B, C, T, H, W = videos.shape
            x = videos.float().transpose(1, 2).reshape(B * T, C, H, W)  # (B·T, 3, H, W)
            if (H, W) != (self.resize, self.resize):
                x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
            x = x.reshape(B, T, C, self.resize, self.resize).transpose(1, 2)  # (B, 3, T, S, S)
            out = self.network(x * (2 / 255) - 1)
        return out.double().cpu()

    @property
    def meta(self) -> dict:
        return {"detector": self.name, "detector_kind": self.kind, "detector_sha256": self.sha256,
                "detector_resize": self.resize}


def load_detector(path: Union[str, Path], sha256: Optional[str] = None, device: Union[str, torch.device] = "cpu",
                  resize: int = 224) -> Detector:
    """Load a local FVD detector file, verifying its checksum first.

    The expected hash is ``sha256`` when given, else the pin for a known file name (see
    ``KNOWN_DETECTORS``); a file with neither is loaded and its hash recorded with the results.
    TorchScript archives load with ``torch.jit.load``, state dicts with ``torch.load(weights_only=True)``
    (never an unrestricted unpickle).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detector file at {path}. {WHERE}")
    head = path.read_bytes()[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")):
        raise ValueError(f"{path} is an HTML page (a failed download, e.g. Dropbox's), not weights. {WHERE}")
    actual = file_sha256(path)
    known = KNOWN_DETECTORS.get(path.name)
    expected = (sha256 or (known or {}).get("sha256") or "").lower()
    if expected and actual != expected:
        origin = f" It comes from {known['source']}." if known else ""
        raise ChecksumError(f"{path}: SHA-256 {actual} is not the expected {expected}; refusing a different or "
                            f"damaged detector (FVDs from other weights are not comparable).{origin} Pass "
                            "--detector-sha256 to accept a file you trust.")
    if _is_torchscript(path):
        network = torch.jit.load(str(path), map_location=device).eval()
        return Detector(network, "torchscript", actual, path.name, device=torch.device(device))
    from moviola.io.checkpoint import load_foreign_state_dict

    sd = load_foreign_state_dict(path)
    num_classes = sd["logits.conv3d.weight"].shape[0] if "logits.conv3d.weight" in sd else 400
    network = InceptionI3d(num_classes)
    missing, unexpected = network.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{path} is not an I3D state dict in the InceptionI3d layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return Detector(network.to(device).eval(), "state_dict", actual, path.name, resize=resize,
                    device=torch.device(device))


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding a ``code/`` directory (a plain torch.save zip has none)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except zipfile.BadZipFile:
        return False
