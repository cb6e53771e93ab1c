"""diffusers' ``LatteTransformer3DModel`` (Latte-1, text-to-video) <-> moviola's text-conditioned Latte.

diffusers' model is moviola's variant 1 with ``injection="adaln_single"``, cross-attention to
the projected text in the spatial blocks, and PixArt's position scaling
(``pos_base_size = sample_size / patch``, ``pos_interpolation_scale = max(sample_size // 64, 1)``).
Only the names differ, and diffusers keeps q, k and v as separate projections where moviola
fuses them; the table below lists each moviola tensor with the diffusers tensors it is the
concatenation of (along dim 0), so one table serves both directions.

Export writes the transformer's ``config.json`` and weights, and a ``scheduler_config.json``
(the run's noise schedule as the diffusers scheduler of its sampler) beside them. diffusers'
temporal positions are a table of ``video_length`` rows, so that is the latent frame count.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from moviola.config import (AutoencoderConfig, RunConfig, autoencoder_spatial_factor, config_from_json, latent_frames,
                            load_config)
from moviola.interop.common import (WEIGHTS, named_size, read_diffusers_config, read_diffusers_weights,
                                    write_checkpoint_dir)
from moviola.models.loading import load_model
from moviola.io.checkpoint import CheckpointError, resolve_checkpoint, write_new_directory

SCHEDULER = "scheduler_config.json"  # beside config.json: DDIMScheduler.from_pretrained(dir) reads it
# the diffusers config values moviola's blocks implement (anything else is a different model)
REQUIRED = {"norm_type": "ada_norm_single", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
            "norm_eps": 1e-6, "attention_bias": True}


def _linear(ours: str, *theirs: str) -> list[tuple[str, list[str]]]:
    return [(f"{ours}.{p}", [f"{t}.{p}" for t in theirs]) for p in ("weight", "bias")]


def name_table(num_layers: int) -> list[tuple[str, list[str]]]:
    """(moviola key, [diffusers keys concatenated along dim 0]) for every tensor of the model."""
    table = [*_linear("x_embedder.proj", "pos_embed.proj"),
             *_linear("t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_1"),
             *_linear("t_embedder.mlp.2", "adaln_single.emb.timestep_embedder.linear_2"),
             *_linear("adaln_single.1", "adaln_single.linear"),
             *_linear("caption_projection.fc1", "caption_projection.linear_1"),
             *_linear("caption_projection.fc2", "caption_projection.linear_2"),
             ("final_layer.scale_shift_table", ["scale_shift_table"]),
             *_linear("final_layer.linear", "proj_out")]
    for ours, theirs in (("spatial_blocks", "transformer_blocks"), ("temporal_blocks", "temporal_transformer_blocks")):
        for i in range(num_layers):
            a, b = f"{ours}.{i}", f"{theirs}.{i}"
            table += [(f"{a}.scale_shift_table", [f"{b}.scale_shift_table"]),
                      *_linear(f"{a}.attn.qkv", f"{b}.attn1.to_q", f"{b}.attn1.to_k", f"{b}.attn1.to_v"),
                      *_linear(f"{a}.attn.proj", f"{b}.attn1.to_out.0"),
                      *_linear(f"{a}.mlp.fc1", f"{b}.ff.net.0.proj"),
                      *_linear(f"{a}.mlp.fc2", f"{b}.ff.net.2")]
            if ours == "spatial_blocks":
                table += [*_linear(f"{a}.cross_attn.q", f"{b}.attn2.to_q"),
                          *_linear(f"{a}.cross_attn.kv", f"{b}.attn2.to_k", f"{b}.attn2.to_v"),
                          *_linear(f"{a}.cross_attn.proj", f"{b}.attn2.to_out.0")]
    return table


def diffusers_to_moviola(sd: dict[str, torch.Tensor], config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Model-config fields and the renamed state dict of a LatteTransformer3DModel."""
    bad = {k: config.get(k) for k, v in REQUIRED.items() if config.get(k) != v}
    heads, head_dim = config.get("num_attention_heads", 16), config.get("attention_head_dim", 88)
    D = heads * head_dim
    if config.get("cross_attention_dim") != D:
        bad["cross_attention_dim"] = config.get("cross_attention_dim")
    if not config.get("caption_channels"):
        bad["caption_channels"] = config.get("caption_channels")
    if bad:
        raise CheckpointError(f"unsupported LatteTransformer3DModel config {bad}: moviola implements "
                              f"{REQUIRED} with cross_attention_dim = heads × head_dim = {D} and a caption_channels")
    layers, p = config.get("num_layers", 1), config["patch_size"]
    in_ch = config["in_channels"]
    out_ch = config.get("out_channels") or in_ch
    if out_ch not in (in_ch, 2 * in_ch):
        raise CheckpointError(f"out_channels={out_ch} is neither in_channels={in_ch} nor twice it (learned sigma)")
    table = name_table(layers)
    wanted = {t for _, theirs in table for t in theirs}
    missing, unknown = sorted(wanted - set(sd)), sorted(set(sd) - wanted)
    if missing or unknown:
        raise CheckpointError(f"the LatteTransformer3DModel weights do not fit its config: missing keys {missing[:12]}, "
                              f"unknown keys {unknown[:12]}")
    out = {ours: torch.cat([sd[t] for t in theirs]) if len(theirs) > 1 else sd[theirs[0]] for ours, theirs in table}
    sample = config.get("sample_size", 64)
    model = dict(family="latte", size=named_size(D, heads) or "tiny", patch_size=p, hidden_size=D,
                 depth=2 * layers, num_heads=heads, mlp_ratio=4.0, learned_sigma=out_ch == 2 * in_ch,
                 injection="adaln_single", pos_base_size=sample // p,
                 pos_interpolation_scale=float(max(sample // 64, 1)))
    conditions = dict(num_classes=0, text_channels=config["caption_channels"])
    shape = dict(latent_size=sample, frames=config.get("video_length", 16), in_channels=in_ch)
    return {"model": model, "conditions": conditions, "shape": shape}, out


# what diffusers' LatteTransformer3DModel is, as moviola's switches: (key, the value it needs)
EXPORTABLE_MODEL = (("layout", "interleaved"), ("patch_embed", "frame"), ("injection", "adaln_single"),
                    ("temporal_pos", "abs"), ("qk_norm", False), ("text_pooled", False))
EXPORTABLE_CONDITIONS = (("num_classes", 0), ("context_frames", False))
# the diffusers scheduler of each moviola sampler, with the settings that make it step as moviola's does
SCHEDULERS = {"ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
              "ddpm": ("DDPMScheduler", {"clip_sample": False}),
              "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                          "solver_type": "midpoint", "lower_order_final": True})}
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


def export_problems(cfg: RunConfig) -> list[str]:
    """Every setting of a run that diffusers' LatteTransformer3DModel cannot represent, with what it needs."""
    m, c = cfg.model, cfg.conditions
    if m.family != "latte":
        return [f"model.family={m.family!r} (needs 'latte')"]
    problems = [f"model.{k}={getattr(m, k)!r} (needs {v!r})" for k, v in EXPORTABLE_MODEL if getattr(m, k) != v]
    problems += [f"conditions.{k}={getattr(c, k)!r} (needs {v!r})" for k, v in EXPORTABLE_CONDITIONS
                 if getattr(c, k) != v]
    if c.text_channels is None:
        problems.append("conditions.text_channels=None (needs the text width: diffusers' Latte always takes text)")
    if m.dims().mlp_ratio != 4.0:
        problems.append(f"model.mlp_ratio={m.dims().mlp_ratio} (needs 4)")
    if m.pos_base_size is None:
        problems.append("model.pos_base_size=None (needs the latent size / patch size, what diffusers calls "
                        "sample_size / patch_size)")
    elif m.pos_interpolation_scale != max(m.pos_base_size * m.patch_size // 64, 1):
        sample = m.pos_base_size * m.patch_size
        problems.append(f"model.pos_interpolation_scale={m.pos_interpolation_scale} (needs "
                        f"{max(sample // 64, 1)}: diffusers derives it as max(sample_size // 64, 1), sample_size = "
                        f"pos_base_size × patch_size = {sample})")
    return problems


def check_exportable(cfg: RunConfig) -> None:
    """Refuse, naming every setting at once, a model diffusers' LatteTransformer3DModel cannot represent."""
    problems = export_problems(cfg)
    if problems:
        raise CheckpointError("diffusers' LatteTransformer3DModel cannot represent this model: " + "; ".join(problems)
                              + ". Train one with those settings (configs/shapes/latte-t2v-diffusers.yaml is one; "
                              "docs/latte.md lists what diffusers can represent)")


def moviola_to_diffusers(cfg: RunConfig, sd: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """A diffusers config and state dict for a moviola model diffusers can represent."""
    check_exportable(cfg)
    m, c = cfg.model, cfg.conditions
    sample = m.pos_base_size * m.patch_size
    dims = m.dims()
    D, heads = dims.hidden_size, dims.num_heads
    layers = len({k.split(".")[1] for k in sd if k.startswith("spatial_blocks.")})
    in_ch = sd["x_embedder.proj.weight"].shape[1]
    out_ch = sd["final_layer.linear.weight"].shape[0] // (m.patch_size ** 2)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in name_table(layers):
        for name, part in zip(theirs, sd[ours].chunk(len(theirs))):
            out[name] = part.contiguous()
    config = {"_class_name": "LatteTransformer3DModel", "_diffusers_version": _diffusers_version(),
              "num_attention_heads": heads, "attention_head_dim": D // heads, "in_channels": in_ch,
              "out_channels": out_ch, "num_layers": layers, "dropout": 0.0, "cross_attention_dim": D,
              "sample_size": sample, "patch_size": m.patch_size, "num_embeds_ada_norm": 1000,
              "caption_channels": c.text_channels, "video_length": latent_frames(cfg.autoencoder, cfg.data.frames),
              **REQUIRED}
    return config, out


def _diffusers_version() -> str:
    try:
        import diffusers
        return diffusers.__version__
    except ImportError:
        return "0.42.1"


def scheduler_config(cfg: RunConfig) -> dict:
    """The run's noise schedule and sampler as a diffusers scheduler config (``scheduler_config.json``):
    the same betas, prediction, zero terminal SNR and timestep spacing that moviola samples with."""
    d = cfg.diffusion
    name, extra = SCHEDULERS[cfg.sample.sampler]
    if cfg.sample.sampler == "ddpm":
        extra = {**extra, "variance_type": "learned_range" if cfg.model.learned_sigma else "fixed_small"}
    return {"_class_name": name, "_diffusers_version": _diffusers_version(), "num_train_timesteps": d.num_timesteps,
            "beta_schedule": BETA_SCHEDULES[d.schedule], "beta_start": d.beta_start, "beta_end": d.beta_end,
            "prediction_type": PREDICTION_TYPES[d.prediction], "rescale_betas_zero_snr": d.zero_terminal_snr,
            "timestep_spacing": d.timestep_spacing, "steps_offset": 0, **extra}


def _read_diffusers_dir(src: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    src, config = read_diffusers_config(src, "LatteTransformer3DModel", "transformer", kind="diffusers_latte")
    return config, read_diffusers_weights(src)


def import_diffusers(src: Union[str, Path], out_dir: Union[str, Path], vae: Optional[Union[str, Path]] = None,
                     text_encoder: Optional[Union[str, Path]] = None) -> Path:
    """``moviola convert diffusers-latte SRC OUT``: a diffusers Latte-1 transformer -> a checkpoint directory.

    ``vae`` and ``text_encoder`` default to the ``vae/`` and ``text_encoder/`` folders beside
    ``transformer/`` in a pipeline directory; the checkpoint then samples from prompts (T5, 120
    tokens, as Latte-1). Without a text encoder it still converts; set ``text.encoder`` later.
    """
    src = Path(src)
    config, sd = _read_diffusers_dir(src)
    root = src.parent if (src / "config.json").is_file() and src.name == "transformer" else src
    if text_encoder is None and (root / "text_encoder" / "config.json").is_file():
        text_encoder = root / "text_encoder"
    if vae is None:
        vae = root / "vae"
        if not (vae / "config.json").is_file():
            raise CheckpointError(f"no VAE found at {vae}: give --vae DIR (a diffusers AutoencoderKL directory)")
    info, out = diffusers_to_moviola(sd, config)
    factor = autoencoder_spatial_factor(AutoencoderConfig(kind="frame_vae", path=str(vae)))
    tree = {"name": src.name if src.name != "transformer" else src.parent.name, "model": info["model"],
            "conditions": info["conditions"],
            "autoencoder": {"kind": "frame_vae", "path": str(vae)},
            "data": {"dataset": "folder", "root": "data/videos", "size": info["shape"]["latent_size"] * factor,
                     "frames": info["shape"]["frames"]},
            "diffusion": {"schedule": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                          "prediction": "eps", "timestep_spacing": "leading"},
            "sample": {"sampler": "ddim", "steps": 50, "cfg": 7.5}}
    if text_encoder is not None:
        tree["text"] = {"encoder": str(Path(text_encoder).absolute()), "max_length": 120}
    return write_checkpoint_dir(out_dir, load_config(data=tree), out)


def export_diffusers(ckpt: Union[str, Path], out_dir: Union[str, Path], weights: str = "ema") -> Path:
    """``moviola convert to-diffusers CKPT OUT``: a diffusers ``save_pretrained`` directory
    (config.json + diffusion_pytorch_model.safetensors) that ``LatteTransformer3DModel.from_pretrained`` loads,
    and the scheduler it samples with (scheduler_config.json, which the scheduler's ``from_pretrained`` loads)."""
    path = resolve_checkpoint(ckpt)
    cfg = config_from_json(path / "config.json")
    check_exportable(cfg)  # before loading any weight
    model = load_model(path, weights=weights)
    config, sd = moviola_to_diffusers(cfg, model.state_dict())
    left = set(model.state_dict()) - {k for k, _ in name_table(config["num_layers"])}
    if left:
        raise CheckpointError(f"no diffusers name for {sorted(left)[:8]}")

    def write(tmp: Path) -> None:
        save_file(sd, str(tmp / WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / SCHEDULER).write_text(json.dumps(scheduler_config(cfg), indent=2) + "\n")

    return write_new_directory(out_dir, write)
