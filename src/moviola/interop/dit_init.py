"""Initialize a video Latte from an image DiT (``moviola train CONFIG --init-from DiT-XL-2-256x256.pt``).

A DiT state dict (``x_embedder``, ``t_embedder``, ``y_embedder``, ``blocks.i.*``, ``final_layer``,
``pos_embed``) fills the parts of the video model that see one frame at a time:

- the embedders and the final layer where their shapes agree. A 2-D patch kernel is inflated
  to a tubelet (repeated over its s frames and divided by s, so a static clip embeds like the
  image). The label table is dropped when the class count differs (DiT's 1000 ImageNet classes);
  ``pos_embed`` is a fixed sin-cos that moviola recomputes.
- the spatial attention and MLP of each block, from DiT blocks spread evenly over DiT's depth:
  spatial block k of n takes DiT block ``k·len(DiT)/n`` (for XL: 0, 2, ..., 26, the blocks the
  official ``--pretrained`` load gives its spatial blocks). With adaLN-Zero their modulation comes
  along; in layout factorized_attention DiT's attention chunks go to the spatial attention and the temporal
  attention's stay zero, so it starts switched off.

Everything temporal stays at its initialization (adaLN-Zero: identity). The returned lines say
what was loaded, what was left at initialization and what in the file was not used.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Union

import torch

from moviola.io.checkpoint import CheckpointError, load_foreign_state_dict

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BLOCK_PARTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def _summary(keys) -> str:
    """Module names of keys, with block indices folded: ``spatial_blocks.{0,1,2}.mlp, t_embedder``."""
    groups: dict[str, list[str]] = {}
    for k in sorted(keys):
        parts = k.split(".")
        if len(parts) > 2 and parts[1].isdigit():
            name, idx = f"{parts[0]}.{{}}", parts[1]
        else:
            name, idx = ".".join(parts[:2]) if len(parts) > 2 else parts[0], None
        if idx is not None and idx not in groups.setdefault(name, []):
            groups[name].append(idx)
        groups.setdefault(name, [])
    out = [n.format("{" + ",".join(sorted(v, key=int)) + "}") if v else n for n, v in groups.items()]
    return ", ".join(out) or "nothing"


def init_from_dit(model: torch.nn.Module, path: Union[str, Path]) -> list[str]:
    """Load the frame-wise parts of ``model`` from a DiT checkpoint; returns log lines."""
    sd = load_foreign_state_dict(path)
    dit_blocks = sorted({int(m.group(1)) for k in sd if (m := _BLOCK.match(k))})
    if not dit_blocks or "x_embedder.proj.weight" not in sd:
        raise CheckpointError(f"{path} is not a DiT state dict (no x_embedder / blocks.i.* keys)")
    if getattr(model, "family", None) != "latte":
        raise ValueError(f"--init-from a DiT initializes Latte models, not model.family {getattr(model, 'family', '?')!r}")
    if model.layout == "factorized_heads":
        raise ValueError("--init-from a DiT needs spatial attention layers: layout factorized_heads splits every "
                         "attention's heads between space and time (use interleaved, late_fusion or "
                         "factorized_attention)")
    own = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    notes: list[str] = []
    wrong: list[str] = []

    def take(ours: str, theirs: str, value=None) -> None:
        value = sd[theirs] if value is None else value
        if value.shape != own[ours].shape:
            wrong.append(f"{theirs} {tuple(value.shape)} -> {ours} {tuple(own[ours].shape)}")
            return
        new[ours] = value.to(own[ours].dtype)
        used.add(theirs)

    w = sd["x_embedder.proj.weight"]
    if model.patch_embed == "tubelet" and w.dim() == 4:
        s = model.tubelet_size
        take("x_embedder.proj.weight", "x_embedder.proj.weight", w[:, :, None].repeat(1, 1, s, 1, 1) / s)
        notes.append(f"x_embedder: DiT's 2-D patch kernel inflated to {s}-frame tubelets")
    else:
        take("x_embedder.proj.weight", "x_embedder.proj.weight")
    for k in ("x_embedder.proj.bias", "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias",
              "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias"):
        if k in sd:
            take(k, k)
    table = "y_embedder.embedding_table.weight"
    if table in sd:
        if table in own and sd[table].shape == own[table].shape:
            take(table, table)
        else:
            have = own[table].shape[0] - 1 if table in own else 0
            notes.append(f"y_embedder: dropped ({sd[table].shape[0] - 1} classes in the file, the model has {have})")
    for k in sd:
        if k.startswith("final_layer.") and k in own:
            if sd[k].shape == own[k].shape:
                take(k, k)
            else:
                notes.append(f"{k}: left at initialization (shape {tuple(sd[k].shape)} in the file, "
                             f"{tuple(own[k].shape)} in the model)")

    targets = [f"spatial_blocks.{k}" for k in range(len(model.spatial_blocks))] if model.layout in ("interleaved", "late_fusion") \
        else [f"blocks.{k}" for k in range(len(model.blocks))]
    pick = [dit_blocks[k * len(dit_blocks) // len(targets)] for k in range(len(targets))]
    D = model.hidden_size
    for target, j in zip(targets, pick):
        for part in _BLOCK_PARTS:
            for p in ("weight", "bias"):
                take(f"{target}.{part}.{p}", f"blocks.{j}.{part}.{p}")
        if model.injection != "adaln":
            continue  # adaLN-single / tokens: DiT's per-block modulation has no counterpart
        for p in ("weight", "bias"):
            theirs, ours = f"blocks.{j}.adaLN_modulation.1.{p}", f"{target}.adaLN_modulation.1.{p}"
            if model.layout == "factorized_attention":  # 9 chunks: spatial attention, temporal attention, MLP
                if sd[theirs].shape != (6 * D, *own[ours].shape[1:]):
                    wrong.append(f"{theirs} {tuple(sd[theirs].shape)} -> 6 of the 9 chunks of {ours}")
                    continue
                value = own[ours].clone()
                value[:3 * D], value[6 * D:] = sd[theirs][:3 * D], sd[theirs][3 * D:]
                take(ours, theirs, value)
            else:
                take(ours, theirs)
    if wrong:
        raise CheckpointError(f"{path} does not fit this model (another width or patch size?): {wrong[:6]}")
    notes.insert(0, f"spatial blocks {targets[0].split('.')[0]}.0..{len(targets) - 1} <- DiT blocks {pick}")
    model.load_state_dict({**own, **new})
    lines = [f"init-from {path}: loaded {len(new)} tensors: {_summary(new)}"]
    lines += [f"  {n}" for n in notes]
    lines.append(f"  left at initialization: {_summary(set(own) - set(new))}")
    lines.append(f"  not used from the file: {_summary(set(sd) - used)}"
                 + (" (pos_embed is recomputed sin-cos)" if "pos_embed" in sd else ""))
    return lines
