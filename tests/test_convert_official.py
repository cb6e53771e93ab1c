"""Official Latte checkpoints -> moviola: the full key set of every released size (meta tensors),
every tensor where it belongs, and the same output as an independent re-implementation of the
official forward over (B, F, C, H, W), written here from the description of the official code."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import moviola
from moviola import Conditioning
from moviola.cli import main
from moviola.config import load_config
from moviola.interop import official_to_moviola
from moviola.interop.common import model_on_meta
from moviola.io.checkpoint import check_state_dict

SIZES = {"S": (384, 12), "B": (768, 12), "L": (1024, 24), "XL": (1152, 28)}  # hidden, depth (both kinds)


# ------------------------------------------------------------------ the official model, written out

def mae_sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [sin, cos]


def official_pos_embed(dim: int, grid: int) -> torch.Tensor:
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))  # w first
    emb = np.concatenate([mae_sincos_1d(dim // 2, gw), mae_sincos_1d(dim // 2, gh)], axis=1)
    return torch.from_numpy(emb).float()[None]  # (1, N, D)


def official_temp_embed(dim: int, frames: int) -> torch.Tensor:
    return torch.from_numpy(mae_sincos_1d(dim, np.arange(frames))).float()[None]  # (1, F, D)


def official_state_dict(D: int, depth: int, p: int, latent: int = 32, frames: int = 16, in_ch: int = 4,
                        num_classes: int = 0, learn_sigma: bool = True, device: str = "cpu", seed: int = 0):
    """Random weights under the official key names and shapes (reference notes §2a)."""
    g = torch.Generator().manual_seed(seed)
    out_ch = 2 * in_ch if learn_sigma else in_ch

    def rnd(*shape):
        if device == "meta":
            return torch.empty(*shape, device="meta")
        return torch.randn(*shape, generator=g) * 0.1

    sd = {"pos_embed": official_pos_embed(D, latent // p), "temp_embed": official_temp_embed(D, frames),
          "x_embedder.proj.weight": rnd(D, in_ch, p, p), "x_embedder.proj.bias": rnd(D),
          "t_embedder.mlp.0.weight": rnd(D, 256), "t_embedder.mlp.0.bias": rnd(D),
          "t_embedder.mlp.2.weight": rnd(D, D), "t_embedder.mlp.2.bias": rnd(D)}
    if num_classes:
        sd["y_embedder.embedding_table.weight"] = rnd(num_classes + 1, D)
    for i in range(depth):
        for name, shape in (("attn.qkv", (3 * D, D)), ("attn.proj", (D, D)), ("mlp.fc1", (4 * D, D)),
                            ("mlp.fc2", (D, 4 * D)), ("adaLN_modulation.1", (6 * D, D))):
            sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"] = rnd(*shape), rnd(shape[0])
    sd["final_layer.linear.weight"], sd["final_layer.linear.bias"] = rnd(p * p * out_ch, D), rnd(p * p * out_ch)
    sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"] = rnd(2 * D, D), rnd(2 * D)
    return sd


def official_forward(sd, x, t, y, heads: int, p: int) -> torch.Tensor:
    """The official ``Latte.forward`` (DiT blocks, even index spatial, odd temporal) on x (B, F, C, H, W)."""
    lin = lambda z, k: z @ sd[f"{k}.weight"].T + sd[f"{k}.bias"]  # noqa: E731
    B, Fr, C, H, W = x.shape
    D = sd["x_embedder.proj.weight"].shape[0]
    z = F.conv2d(x.reshape(B * Fr, C, H, W), sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    z = z.flatten(2).transpose(1, 2) + sd["pos_embed"]  # '(b f) n d'
    N = z.shape[1]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype)  # [cos, sin]
    c = lin(F.silu(lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
    if y is not None:
        c = c + sd["y_embedder.embedding_table.weight"][y]
    c_spatial, c_temp = c.repeat_interleave(Fr, dim=0), c.repeat_interleave(N, dim=0)

    def modulate(z, shift, scale):
        return z * (1 + scale[:, None]) + shift[:, None]

    def norm(z):
        return F.layer_norm(z, (D,), eps=1e-6)

    def block(k, z, cc):
        sm, cm, gm, sf, cf, gf = lin(F.silu(cc), f"{k}.adaLN_modulation.1").chunk(6, dim=1)
        h = modulate(norm(z), sm, cm)
        n = h.shape[1]
        q, kk, v = lin(h, f"{k}.attn.qkv").reshape(h.shape[0], n, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kk.transpose(-2, -1)) * (D // heads) ** -0.5).softmax(dim=-1)
        z = z + gm[:, None] * lin((attn @ v).transpose(1, 2).reshape(h.shape[0], n, D), f"{k}.attn.proj")
        h = F.gelu(lin(modulate(norm(z), sf, cf), f"{k}.mlp.fc1"), approximate="tanh")
        return z + gf[:, None] * lin(h, f"{k}.mlp.fc2")

    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(0, depth, 2):
        z = block(f"blocks.{i}", z, c_spatial)
        z = z.reshape(B, Fr, N, D).transpose(1, 2).reshape(B * N, Fr, D)  # '(b f) t d -> (b t) f d'
        if i == 0:
            z = z + sd["temp_embed"]
        z = block(f"blocks.{i + 1}", z, c_temp)
        z = z.reshape(B, N, Fr, D).transpose(1, 2).reshape(B * Fr, N, D)  # '(b t) f d -> (b f) t d'
    shift, scale = lin(F.silu(c_spatial), "final_layer.adaLN_modulation.1").chunk(2, dim=1)
    z = lin(modulate(norm(z), shift, scale), "final_layer.linear")
    hh = ww = int(N ** 0.5)
    co = z.shape[-1] // (p * p)
    z = torch.einsum("nhwpqc->nchpwq", z.reshape(B * Fr, hh, ww, p, p, co)).reshape(B * Fr, co, hh * p, ww * p)
    return z.reshape(B, Fr, co, H, W)


# ------------------------------------------------------------------ fixtures



TINY = dict(D=32, depth=4, p=2, latent=8, frames=4)


# ------------------------------------------------------------------ every size: the full key set

@pytest.mark.parametrize("size,p", [(s, p) for s in SIZES for p in (2, 4, 8)])
def test_every_official_size_maps_every_key(size, p):
    D, depth = SIZES[size]
    num_classes = 101 if (size, p) == ("XL", 2) else 0  # the UCF101 model
    sd = official_state_dict(D, depth, p, num_classes=num_classes, device="meta")
    if (size, p) == ("XL", 2):
        assert len(sd) == 293  # the reference count for XL/2 with a label table
    info, out = official_to_moviola(sd)
    m = info["model"]
    assert set(info) == {"model", "conditions", "shape"}
    assert (m["size"], m["hidden_size"], m["depth"], m["patch_size"], m["learned_sigma"]) == (size, D, depth, p, True)
    assert info["conditions"] == {"num_classes": num_classes}
    assert info["shape"] == {"latent_size": 32, "frames": 16, "in_channels": 4}
    for k, v in sd.items():  # every tensor landed where it belongs (the very same tensor object)
        if k in ("pos_embed", "temp_embed"):
            continue
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            k = f"{'temporal' if int(i) % 2 else 'spatial'}_blocks.{int(i) // 2}.{rest}"
        assert out[k] is v
    assert len(out) == len(sd) - 2
    cfg = load_config(data={"model": m, "conditions": info["conditions"],
                            "data": {"dataset": "folder", "root": "ucf101", "size": 32, "frames": 16}})
    check_state_dict(model_on_meta(cfg, 4), out, f"Latte-{size}/{p}")  # names and shapes of moviola's model


# ------------------------------------------------------------------ numbers: the same output

@pytest.mark.parametrize("num_classes", [0, 5])
def test_converted_checkpoint_gives_the_official_output(tmp_path, vae_dir, num_classes, capsys):
    ema = official_state_dict(**TINY, num_classes=num_classes, seed=0)
    raw = official_state_dict(**TINY, num_classes=num_classes, seed=1)
    torch.save({"ema": ema, "model": raw}, tmp_path / "ffs.pt")
    assert main(["convert", "latte-official", str(tmp_path / "ffs.pt"), str(tmp_path / "ckpt"),
                 "--vae", str(vae_dir), "--num-heads", "4"]) == 0
    model = moviola.load_model(tmp_path / "ckpt")
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["data"]["size"] == 64 and cfg["data"]["frames"] == 4 and cfg["data"]["frame_stride"] == 3
    assert cfg["diffusion"]["schedule"] == "linear" and cfg["model"]["learned_sigma"] is True
    assert cfg["conditions"]["num_classes"] == num_classes and "num_classes" not in cfg["model"]  # new keys written
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 4, 8, 8, generator=g)  # official layout (B, F, C, H, W)
    t = torch.tensor([3, 801])
    y = torch.tensor([4, 5]) if num_classes else None  # 5 = the null class row of the official table
    cond = Conditioning(labels=torch.tensor([4, -1])) if num_classes else None
    with torch.no_grad():
        ours = model(x.transpose(1, 2), t, cond).transpose(1, 2)  # (B, 2C, F, H, W) -> (B, F, 2C, H, W)
        ref = official_forward(ema, x, t, y, heads=4, p=2)
        ref_raw = official_forward(raw, x, t, y, heads=4, p=2)
        err = (ours - ref).abs().max().item()
        ours64 = model.double()(x.double().transpose(1, 2), t, cond).transpose(1, 2)
        err64 = (ours64 - official_forward({k: v.double() for k, v in ema.items()}, x.double(), t, y, 4, 2)).abs().max()
    print(f"official conversion ({num_classes} classes): max abs diff fp32 {err:.2e}, fp64 {err64.item():.2e}")
    assert ref.shape == (2, 4, 8, 8, 8) and err < 1e-5 and err64 < 1e-10
    assert (ours - ref_raw).abs().max() > 1e-3  # the EMA weights were the ones taken
    # learned sigma: channels 0..C-1 of the official dim 2 are the mean, as moviola's first C channels
    assert torch.allclose(ours[:, :, :4], ref[:, :, :4], atol=1e-5)


def test_bare_state_dict_and_paper_config(tmp_path, vae_dir):
    torch.save(official_state_dict(**TINY), tmp_path / "sky.pt")
    (tmp_path / "base.yaml").write_text("data: {dataset: folder, root: data/sky, size: 64, frames: 4, frame_stride: 3}\n"
                                        "sample: {sampler: ddpm, steps: 250, cfg: 1.0}\n")
    assert main(["convert", "latte-official", str(tmp_path / "sky.pt"), str(tmp_path / "ckpt"), "--vae",
                 str(vae_dir), "--num-heads", "4", "--config", str(tmp_path / "base.yaml")]) == 0
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["data"]["root"].endswith("data/sky") and cfg["sample"]["steps"] == 250 and cfg["name"] == "sky"


@pytest.mark.parametrize("edit,needles", [
    (lambda sd: sd.update({"text_embedding_projection.1.weight": torch.zeros(32, 8)}),
     ["unknown keys", "text_embedding_projection.1.weight"]),
    (lambda sd: sd.pop("blocks.3.mlp.fc1.weight"), ["missing keys", "blocks.3.mlp.fc1.weight"]),
    (lambda sd: sd.pop("blocks.2.attn.qkv.bias"), ["missing keys", "blocks.2.attn.qkv.bias"]),
    (lambda sd: sd["pos_embed"].add_(0.5), ["pos_embed differs"]),
    (lambda sd: sd["temp_embed"].copy_(sd["temp_embed"].flip(1)), ["temp_embed differs"]),
])
def test_bad_state_dicts_are_errors_that_name_the_keys(tmp_path, vae_dir, capsys, edit, needles):
    sd = official_state_dict(**TINY)
    edit(sd)
    torch.save(sd, tmp_path / "bad.pt")
    assert main(["convert", "latte-official", str(tmp_path / "bad.pt"), str(tmp_path / "ckpt"), "--vae",
                 str(vae_dir), "--num-heads", "4"]) == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "ckpt").exists()


def test_unnamed_width_needs_the_head_count(tmp_path, vae_dir, capsys):
    torch.save(official_state_dict(**TINY), tmp_path / "x.pt")
    assert main(["convert", "latte-official", str(tmp_path / "x.pt"), str(tmp_path / "c"), "--vae", str(vae_dir)]) == 2
    assert "--num-heads" in capsys.readouterr().err
