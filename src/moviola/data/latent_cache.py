"""Pre-encoded latents: a dataset wrapper that encodes each clip once and keeps the latent on disk.

Diffusion training on a VAE's latents otherwise re-encodes every clip every step. With
``data.latent_cache: true`` the trainer wraps its dataset in :class:`LatentCache`: item ``i`` is
encoded on first use (the posterior mean, normalized as the diffusion model sees it) and written
to ``<cache>/latents/<key>/<i>.safetensors`` (atomically); later epochs and later runs read it.

The key hashes the autoencoder's weights and normalization (its state dict and scale/shift), the
data config (dataset, root, size, frames, stride, seed, count, bounce; ``clip_start`` and
``frame_strides`` only when set, so older caches keep their key; likewise the low-resolution factor of an
upsampler's run, only when it has one) and, for a folder, each
file's name, size and modification time (an edited file is a different key) and the caption
file's entries (captions and labels are stored with the latents). Items are deterministic (a folder's clip
starts at frame 0, or with ``data.clip_start: random`` at a start drawn from ``(data.seed, index)``: the
same in every epoch and run; with ``data.frame_strides`` its stride is drawn from ``(data.seed, the clip)`` and
kept with the latent), which the trainer's exact-resume contract needs anyway.

An upsampler's run (``conditions.low_res``, ``low_res_factor=f``) also keeps each clip's low-resolution latent:
the clip area-downsampled by f (``data/transforms.area_downsample``), encoded by the same autoencoder, stored as
``low_latent`` in the same file, so a cached item is ``{"latent", "low_latent", ...}``.

A run with image tokens (``conditions.image``: VideoCrafter's frozen CLIP encoder, ``image.encoder``) likewise keeps
the encoder's tokens of each clip's frame 0 (pixels in [-1, 1]) as ``image_tokens`` (N, D), float32, beside the
latent; the key then includes the encoder's content fingerprint (``image_encoder_fingerprint``), and only then, so
every other cache keeps its key.

A file found unusable only when read (a webm too short for a clip) is read once, while the cache is
filled: item ``i`` then holds the next usable item, as ``dataset[i]`` would. What the filling found
is kept beside the latents (``skipped.json``, file -> reason) and given back to the wrapped dataset
when a later run opens the cache (``mark_bad``), so every run counts and names it, and counts it once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset

from moviola.io.files import atomic_write_text


def autoencoder_fingerprint(ae: torch.nn.Module) -> str:
    h = hashlib.sha256(type(ae).__name__.encode())
    for k, v in sorted(ae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps([float(getattr(ae, "scaling_factor", 1.0)), float(getattr(ae, "shift_factor", 0.0))]).encode())
    return h.hexdigest()


def dataset_fingerprint(data_cfg: dict, dataset: Dataset, low_res_factor: int = 0) -> str:
    """The data half of the cache key; ``low_res_factor``: an upsampler's (0 = none), whose items hold a
    low-resolution latent too."""
    keep = {k: data_cfg.get(k) for k in ("dataset", "root", "size", "frames", "frame_stride", "seed", "count", "bounce")}
    if data_cfg.get("clip_start", "first") != "first":  # (not in the key by default: old caches stay valid)
        keep["clip_start"] = data_cfg["clip_start"]
    if data_cfg.get("frame_strides") is not None:  # a stride per clip (likewise only when set)
        keep["frame_strides"] = [int(s) for s in data_cfg["frame_strides"]]
    if low_res_factor:  # items with a low-resolution latent (likewise only when set)
        keep["low_res_factor"] = int(low_res_factor)
    if data_cfg.get("palette") is not None:  # Moving Shapes recoloured (likewise only when set)
        keep["palette"] = {k: v for k, v in data_cfg["palette"].items() if v is not None}
    if data_cfg.get("dataset") == "shapes" and data_cfg.get("frame_stride", 1) != 1:
        keep["shapes_stride"] = True  # Moving Shapes ignored data.frame_stride before it took strides: a new key
    h = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
    for f in getattr(dataset, "files", []):  # a folder: names, sizes and modification times of its files
        st = Path(f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    # captions and labels are stored with each latent: an edited caption file is another key
    h.update(json.dumps(getattr(dataset, "captions", {}), sort_keys=True, default=str).encode())
    return h.hexdigest()


class LatentCache(Dataset):
    """``dataset[i]`` with ``video`` replaced by ``latent`` (c, t, h, w), encoded once, cached on disk; with
    ``low_res_factor`` f > 0 also ``low_latent`` (c, t, h/f, w/f), the clip's encoding area-downsampled by f; with
    an ``image_encoder`` (a frozen CLIP: conditioning/image.py) also ``image_tokens`` (N, D), its tokens of frame 0."""

    def __init__(self, dataset: Dataset, autoencoder, data_cfg: dict, cache_dir: Optional[str] = None,
                 device: "str | torch.device" = "cpu", low_res_factor: int = 0, image_encoder=None):
        from moviola.conditioning.text import default_cache_dir

        self.dataset, self.autoencoder, self.device = dataset, autoencoder, torch.device(device)
        self.low_res_factor = int(low_res_factor)
        self.image_encoder = image_encoder
        parts = autoencoder_fingerprint(autoencoder) + dataset_fingerprint(data_cfg, dataset, self.low_res_factor)
        if image_encoder is not None:  # items with image tokens (only then in the key: old caches keep theirs)
            parts += "\0image-tokens\0" + image_encoder.fingerprint
        key = hashlib.sha256(parts.encode())
        self.dir = Path(cache_dir or default_cache_dir()) / "latents" / key.hexdigest()[:32]
        self.encoded = 0  # items this process encoded (the rest came from disk)
        self._recorded: dict[str, str] = self._read_skipped()
        if self._recorded and hasattr(dataset, "mark_bad"):
            dataset.mark_bad(self._recorded)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # skipped, bad_items, files, ...: the wrapped dataset's
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def fill(self, batch_size: int = 16, progress: bool = False) -> int:
        """Encode every item not cached yet, ``batch_size`` at a time (much faster than one by one
        in the first epoch); returns how many were encoded."""
        from tqdm import tqdm

        missing = [i for i in range(len(self)) if not (self.dir / f"{i}.safetensors").is_file()]
        bar = tqdm(range(0, len(missing), batch_size), disable=not (progress and missing), desc="latent cache")
        for start in bar:
            idx = missing[start:start + batch_size]
            raws = [self.dataset[i] for i in idx]
            latents, lows, tokens = self._encode(torch.stack([r["video"] for r in raws]))
            for k, (i, raw) in enumerate(zip(idx, raws)):
                self._store(i, latents[k], raw, None if lows is None else lows[k],
                            None if tokens is None else tokens[k])
        self._record_skipped()
        return len(missing)

    def _read_skipped(self) -> dict[str, str]:
        """What filling this cache found unusable (file -> reason), as ``_record_skipped`` kept it."""
        try:
            table = json.loads((self.dir / "skipped.json").read_text())
        except (OSError, ValueError):  # none yet, or damaged: the files are read (and found) again
            return {}
        if not isinstance(table, dict):
            return {}
        return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, str)}

    def _record_skipped(self) -> None:
        """Write ``skipped.json`` when reading found files the record does not have yet (atomically)."""
        found = {**self._recorded, **(getattr(self.dataset, "bad_items", None) or {})}
        if found == self._recorded:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "skipped.json", json.dumps(found, sort_keys=True))
            self._recorded = found
        except OSError:
            pass  # like a latent: a read-only cache costs a count in later runs, not this run

    @torch.no_grad()
    def _encode(self, videos: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Latents of pixel clips (B, 3, T, H, W); those of the clips area-downsampled by low_res_factor (or None);
        the image encoder's tokens of each clip's frame 0 (B, N, D) (or None)."""
        from moviola.data.transforms import area_downsample

        videos = videos.to(self.device)
        latents = self.autoencoder.encode(videos).float().cpu()
        lows = (self.autoencoder.encode(area_downsample(videos, self.low_res_factor)).float().cpu()
                if self.low_res_factor else None)
        tokens = self.image_encoder(videos[:, :, 0]).float().cpu() if self.image_encoder is not None else None
        return latents, lows, tokens

    def _store(self, index: int, latent: torch.Tensor, raw: dict, low: Optional[torch.Tensor] = None,
               tokens: Optional[torch.Tensor] = None) -> dict:
        from safetensors.torch import save_file

        self.encoded += 1
        item = {"latent": latent, "label": torch.as_tensor(raw.get("label", -1)).long(), "caption": raw.get("caption", "")}
        tensors = {"latent": latent.contiguous(), "label": item["label"].reshape(())}
        if low is not None:  # an upsampler's low-resolution latent
            item["low_latent"] = low
            tensors["low_latent"] = low.contiguous()
        if tokens is not None:  # the image encoder's tokens of frame 0
            item["image_tokens"] = tokens
            tensors["image_tokens"] = tokens.contiguous()
        if "stride" in raw:  # the clip's frame stride (data.frame_strides)
            item["stride"] = int(raw["stride"])
            tensors["stride"] = torch.tensor(item["stride"], dtype=torch.int64)
        path = self.dir / f"{int(index)}.safetensors"
        meta = torch.frombuffer(bytearray(json.dumps({"caption": item["caption"]}).encode()), dtype=torch.uint8)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({**tensors, "_meta": meta}, str(tmp))
            os.replace(tmp, path)
        except OSError:
            pass  # a full or read-only cache disk costs speed, not the run
        return item

    def __getitem__(self, index: int) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.dir / f"{int(index)}.safetensors"
        item = None
        if path.is_file():
            try:
                stored = load_file(str(path))
                meta = json.loads(stored.pop("_meta").numpy().tobytes().decode())
                item = {"latent": stored["latent"], "label": stored["label"], "caption": meta["caption"]}
                if "stride" in stored:
                    item["stride"] = int(stored["stride"])
                elif getattr(self.dataset, "strides", None) is not None:
                    raise KeyError("stride")  # a clip's stride is part of its item: encode it again
                if self.low_res_factor:
                    item["low_latent"] = stored["low_latent"]  # missing: a KeyError, encoded again
                if self.image_encoder is not None:
                    item["image_tokens"] = stored["image_tokens"]  # likewise
            except (SafetensorError, KeyError, ValueError, OSError, RuntimeError):
                item = None  # damaged: encode again
        if item is not None:
            return item
        raw = self.dataset[index]
        latents, lows, tokens = self._encode(raw["video"][None])
        item = self._store(index, latents[0], raw, None if lows is None else lows[0],
                           None if tokens is None else tokens[0])
        self._record_skipped()
        return item
