"""Reading and writing run configs: YAML/JSON files, ``key=value`` overrides, renamed keys.

``load_config`` reads a YAML (or JSON) file, applies overrides, migrates keys that were renamed
(with a one-line note naming the new keys), builds the frozen dataclasses strictly and validates.
``save_config`` writes the resolved config beside every checkpoint; ``config_from_json`` reads it
back, so a checkpoint rebuilds its own model.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from moviola.config.autoencoder import trains_autoencoder
from moviola.config.base import ConfigError, from_dict, leaves, to_dict
from moviola.config.models import MODEL_CONFIGS
from moviola.config.run import RunConfig
from moviola.io.files import atomic_write_text

# keys that moved when the conditions got their own section (old dotted key -> new dotted key)
MOVED_KEYS: dict[str, str] = {
    "model.num_classes": "conditions.num_classes",
    "model.class_dropout_prob": "conditions.label_dropout",
    "model.caption_channels": "conditions.text_channels",
    "model.context_frames": "conditions.context_frames",
    "model.context_dropout_prob": "conditions.context_dropout",
    "text.dropout_prob": "conditions.text_dropout",
    "train.context_mode": "conditions.context_mode",
}
_NOTED: set[str] = set()


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with YAML 1.2 floats: ``1e-4`` is the number 0.0001, not a string.

    PyYAML follows YAML 1.1, whose float pattern needs a dot (``1.0e-4``), so ``lr: 1e-4``
    would load as the string '1e-4' and fail the type check.
    """


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"""),
    list("-+0123456789."))


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)


def _merge(base: dict, update: dict) -> dict:
    """``update`` over ``base``, section by section (a partial section keeps the other keys)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.sub=value`` with the value read as YAML (so 3, 1e-4, true, [1, 2] keep their types)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def migrate(tree: dict, source: str = "config") -> dict:
    """A copy of ``tree`` with renamed keys under their new names; prints one note naming them.

    An old key and its new name both set to different values is an error (which one was meant?).
    """
    if not isinstance(tree, dict):
        return tree  # from_dict says what is wrong with it
    tree = copy.deepcopy(tree)
    renamed: list[tuple[str, str]] = []
    for old, new in MOVED_KEYS.items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        section = tree.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = tree.setdefault(new_section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{new_section}: expected a mapping, got {target!r}")
        if new_key in target and target[new_key] != value:
            raise ConfigError(f"{old} (the old name of {new}) and {new} are both set, to {value!r} and "
                              f"{target[new_key]!r}: keep {new}")
        target[new_key] = value
        renamed.append((old, new))
    model = tree.get("model")
    family = model.get("family", "latte") if isinstance(model, dict) else None
    if isinstance(family, str) and family in MODEL_CONFIGS:
        renamed += MODEL_CONFIGS[family].migrate(model)
    if renamed:
        _note(source, "renamed config keys " + ", ".join(f"{o} → {n}" for o, n in renamed)
              + " (the old names still load; the new ones are what moviola writes)")
    return tree


def _note(source: str, text: str) -> None:
    key = f"{source}: {text}"
    if key not in _NOTED:  # once per file and process: a pipeline reads its config more than once
        _NOTED.add(key)
        print(f"moviola: note: {key}", file=sys.stderr)


def build_config(tree: dict, source: str = "config") -> RunConfig:
    """The RunConfig of a config tree (old keys migrated), not yet validated."""
    return from_dict(RunConfig, migrate(tree, source))


def load_config(path: Optional[Union[str, Path]] = None, overrides: Optional[list[str]] = None,
                data: Optional[dict] = None, checkpoint: bool = False) -> RunConfig:
    """Read a YAML (or JSON) run config, apply ``key=value`` overrides, validate. A new run that conditions on image
    tokens names its image encoder (``RunConfig.require_image_encoder``); the config of a checkpoint need not
    (``checkpoint=True``, what a converter writes, and :func:`config_from_json`): one converted from the official
    weights takes its tokens from the Python API."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tree = yaml_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    # each source is migrated on its own, so an old key in --set overrides its new name in the file
    tree = migrate(tree, str(path) if path is not None else "config")
    if data is not None:
        tree = _merge(tree, migrate(data, "config data"))
    if overrides:
        command_line: dict = {}  # the --set overrides, one source
        for item in overrides:
            _set_path(command_line, *parse_override(item))
        for key, value in leaves(migrate(command_line, "--set")).items():
            _set_path(tree, key, value)
    cfg = absolute_paths(from_dict(RunConfig, tree)).validate()
    # a new run makes its image tokens from pixels: it names the encoder (a checkpoint's config need not)
    return cfg if checkpoint else cfg.require_image_encoder()


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Make ``autoencoder.path``, ``data.root``, a text or image encoder's directory and the perceptual loss's weight files
    absolute (relative to the working directory),
    so the config saved beside a checkpoint finds them from any directory."""
    ae, data = cfg.autoencoder, cfg.data
    if ae.path:
        ae = dataclasses.replace(ae, path=str(Path(ae.path).expanduser().absolute()))
    if data.root:
        data = dataclasses.replace(data, root=str(Path(data.root).expanduser().absolute()))
    text = cfg.text
    if Path(text.encoder).expanduser().exists():  # a directory, not a packaged encoder's name
        text = dataclasses.replace(text, encoder=str(Path(text.encoder).expanduser().absolute()))
    if text.cache_dir:
        text = dataclasses.replace(text, cache_dir=str(Path(text.cache_dir).expanduser().absolute()))
    image = cfg.image
    if image.encoder and Path(image.encoder).expanduser().exists():
        image = dataclasses.replace(image, encoder=str(Path(image.encoder).expanduser().absolute()))
    vae = cfg.vae
    if vae.perceptual_weights:
        vae = dataclasses.replace(vae, perceptual_weights=tuple(str(Path(p).expanduser().absolute())
                                                                for p in vae.perceptual_weights))
    return dataclasses.replace(cfg, autoencoder=ae, data=data, text=text, image=image, vae=vae)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    """Write the resolved config; a temporary file and a rename, so a crash never leaves half of it."""
    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2) + "\n")


def config_from_json(path: Union[str, Path]) -> RunConfig:
    """A saved config (a run's or a checkpoint's config.json), validated.

    A relative ``autoencoder.path`` is looked up next to the file first, then in the current
    directory: an exported checkpoint names its autoencoder relative to itself (``moviola export``
    writes it so), and then loads from any working directory. (Training writes absolute paths.)
    A config saved before ``train.task`` existed gets the task its autoencoder section implies, and one saved
    before ``data.image_captions`` the joint images it trained with (from any clip).
    """
    data = json.loads(Path(path).read_text())
    ae = data.get("autoencoder") if isinstance(data, dict) else None
    if isinstance(ae, dict) and isinstance(ae.get("path"), str) and ae["path"]:
        ae["path"] = str(locate_autoencoder(ae["path"], Path(path).parent))
    if (isinstance(data, dict) and isinstance(data.get("data"), dict) and "image_captions" not in data["data"]
            and data["data"].get("use_image_num") and isinstance(data.get("conditions"), dict)
            and data["conditions"].get("text_channels")):
        data["data"]["image_captions"] = "any"  # a text run with joint images saved before the key: from any clip
    cfg = build_config(data, str(path))
    named = isinstance(data, dict) and isinstance(data.get("train"), dict) and "task" in data["train"]
    if not named and trains_autoencoder(cfg.autoencoder):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, task="autoencoder"))
    return cfg.validate()


def locate_autoencoder(path: Union[str, Path], checkpoint_dir: Union[str, Path]) -> Path:
    """Where a checkpoint's ``autoencoder.path`` points: relative to the checkpoint directory if it exists
    there, else as given (absolute, or relative to the working directory). Symlinks are followed."""
    path = Path(path).expanduser()
    if not path.is_absolute() and (Path(checkpoint_dir) / path).exists():
        return (Path(checkpoint_dir) / path).resolve()
    return path
