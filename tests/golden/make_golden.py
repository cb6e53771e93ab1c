"""Write the reference outputs that tests/test_golden.py holds the code to.

Run once, on the code *before* the "one house for four families" move (commit 1d4f633), from the
repository root, with one torch thread as the tests use:

    python tests/golden/make_golden.py

It pins, for fixed inputs: every Latte switch combination's denoiser output (weights filled by
name, so the pin checks the state-dict keys too, and from the seed, so it checks construction
order), the shipped pipelines' videos for fixed seeds and every sampler, the shipped
autoencoders' latents and reconstructions, a few training steps' losses, and a run directory
checkpointed at step 2 together with the weights the same run has at step 4 (resume across the
change). The test re-derives each with today's code and compares bit for bit on a CPU of the
kind recorded in ``meta.json`` (and within a float tolerance elsewhere).

This script is a record: it calls the pre-move API and is not expected to run after the move.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))
torch.set_num_threads(1)

from moviola import Conditioning, load_autoencoder, load_pipeline  # noqa: E402
from moviola.config import ModelConfig, load_config  # noqa: E402
from moviola.data.shapes import MovingShapes  # noqa: E402
from moviola.models.registry import build_model  # noqa: E402
from moviola.training.trainer import Trainer  # noqa: E402

B, C, T, H, W = 2, 3, 4, 8, 8
COMBOS = list(itertools.product([1, 2, 3, 4], ["frame", "tubelet"], ["adaln", "adaln_single", "tokens"],
                                ["abs", "rope"]))
EXTRAS = {  # switches beyond the 48 combinations, on variant 1 unless they name one
    "text": dict(caption_channels=24, num_classes=0),
    "text_pooled": dict(caption_channels=24, text_pooled=True, num_classes=0),
    "text_v3_single": dict(caption_channels=24, num_classes=0, variant=3, injection="adaln_single"),
    "context": dict(context_frames=True),
    "learned_sigma": dict(learned_sigma=True),
    "qk_norm": dict(qk_norm=True),
    "pos_scaled": dict(pos_base_size=4, pos_interpolation_scale=2.0),
    "v4_odd_depth": dict(variant=4, depth=3),
}
TINY_RUN = [
    "name=tiny", "model.size=tiny", "model.patch_size=8", "model.hidden_size=16", "model.depth=2",
    "model.num_heads=2", "model.num_classes=48", "model.context_frames=true", "data.size=32", "data.frames=4",
    "data.count=8", "train.batch_size=2", "train.lr=1e-3", "train.device=cpu", "train.precision=fp32",
    "train.log_every=1", "train.keep_last=5", "sample.steps=4",
]


def combo_name(v, p, i, r) -> str:
    return f"v{v}-{p}-{i}-{r}"


def model_config(**kw) -> ModelConfig:
    base = dict(size="tiny", patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=5)
    base.update(kw)
    if base.get("patch_embed") == "tubelet":
        base.setdefault("tubelet_size", 2)
    return ModelConfig(**base)


def fill_by_name(model: torch.nn.Module) -> None:
    """Weights from the parameter names alone: independent of construction order, tied to the keys."""
    with torch.no_grad():
        for name, p in model.state_dict().items():
            g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def inputs(caption: bool = False, context: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, T, H, W, generator=g)
    t_frame = torch.randint(0, 1000, (B, T), generator=g)
    cond = Conditioning(labels=torch.tensor([1, -1]))
    if caption:
        cond = Conditioning(text=torch.randn(B, 6, 24, generator=g),
                            text_mask=torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool))
    if context:
        m = torch.zeros(B, 1, T, 1, 1)
        m[0, :, 0] = 1
        cond.context, cond.context_mask = x.flip(0) * m, m
    return x, torch.tensor([10, 700]), t_frame, cond


def state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def denoisers(out: dict, meta: dict) -> None:
    for v, p, i, r in COMBOS:
        run_denoiser(out, meta, combo_name(v, p, i, r), variant=v, patch_embed=p, injection=i, temporal_pos=r)
    for name, kw in EXTRAS.items():
        run_denoiser(out, meta, name, **kw)


@torch.no_grad()
def run_denoiser(out: dict, meta: dict, name: str, **kw) -> None:
    cfg = model_config(**kw)
    torch.manual_seed(0)
    model = build_model(cfg, C).eval()
    meta["init"][name] = state_hash(model)
    fill_by_name(model)
    x, t, t_frame, cond = inputs(caption=bool(cfg.caption_channels), context=cfg.context_frames)
    out[f"{name}/t"] = model(x, t, cond)
    out[f"{name}/t_frame"] = model(x, t_frame, cond)
    if cfg.patch_embed == "frame":
        out[f"{name}/images"] = model(x, t, cond, num_images=1)
    meta["denoisers"][name] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in json.loads(json.dumps(cfg.__dict__)).items()}


def pipelines(out: dict) -> None:
    tiny = load_pipeline(ROOT / "checkpoints/shapes-latte-tiny", device="cpu")
    for sampler, steps in (("ddim", 8), ("ddpm", 6), ("dpm++2m", 6)):
        out[f"pipe/tiny/{sampler}"] = tiny(labels=[5], num_frames=8, steps=steps, sampler=sampler, cfg=4.0, seed=0)
    t2v = load_pipeline(ROOT / "checkpoints/shapes-latte-t2v", device="cpu")
    out["pipe/t2v/text"] = t2v(prompt=["a red circle moving right"], steps=8, seed=0)
    frame = MovingShapes(split="test", count=4, size=32, frames=17, seed=0)[1]["video"][:, 0]  # (3, H, W)
    out["pipe/t2v/i2v"] = t2v(prompt=["a green square moving up"], image=frame, steps=8, seed=1,
                              negative_prompt="a blue triangle moving left")
    out["pipe/t2v/i2v_only_image"] = t2v(prompt=[""], image=frame, steps=6, seed=2, cfg=2.0)


@torch.no_grad()
def autoencoders(out: dict) -> None:
    clip = MovingShapes(split="test", count=2, size=32, frames=9, seed=0)[0]["video"][None]  # (1, 3, 9, 32, 32)
    for name in ("shapes-causal-vae-32", "shapes-frame-vae-32", "shapes-temporal-decoder-32"):
        ae = load_autoencoder(ROOT / "checkpoints" / name).eval()
        z = ae.encode(clip)
        out[f"ae/{name}/latent"] = z
        out[f"ae/{name}/recon"] = ae.decode(z)


def training(out: dict, meta: dict, tmp: Path) -> None:
    cfg = load_config(overrides=[*TINY_RUN, "train.steps=4", "train.checkpoint_every=2"])
    full = Trainer(cfg, tmp / "full", quiet=True)
    full.train()
    meta["train_losses"] = [json.loads(line) for line in (tmp / "full" / "metrics.jsonl").read_text().splitlines()]
    for k, v in full.model.state_dict().items():
        out[f"train/step4/model/{k}"] = v
    for k, v in full.ema.model.state_dict().items():
        out[f"train/step4/ema/{k}"] = v
    part = Trainer(cfg, tmp / "part", quiet=True)
    part.train(max_steps=2)
    fixture = HERE / "run_step2"
    shutil.rmtree(fixture, ignore_errors=True)
    shutil.copytree(tmp / "part", fixture)
    meta["train_config_overrides"] = TINY_RUN


def main() -> None:
    import tempfile

    out: dict[str, torch.Tensor] = {}
    meta: dict = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "init": {}, "denoisers": {}}
    denoisers(out, meta)
    pipelines(out)
    autoencoders(out)
    with tempfile.TemporaryDirectory() as tmp:
        training(out, meta, Path(tmp))
    save_file({k: v.detach().float().contiguous() for k, v in out.items()}, str(HERE / "outputs.safetensors"))
    (HERE / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(out)} tensors to {HERE / 'outputs.safetensors'}")


if __name__ == "__main__":
    main()
