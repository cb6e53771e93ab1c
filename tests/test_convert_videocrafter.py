"""Official VideoCrafter checkpoints (lvdm's UNetModel, VC1 T2V 512/1024, VC2 T2V) -> moviola's videocrafter.

The official layout is written out here independently of the converter, from the description of
``lvdm/modules/networks/openaimodel3d.py`` and ``lvdm/modules/attention.py``: a key/shape generator that walks
``UNetModel.__init__`` (every TimestepEmbedSequential in order) and a plain-torch forward over the official state
dict (ResBlock with its temporal convolution, SpatialTransformer, TemporalTransformer with its reshapes, relative
positions, causal mask and per-clip text repeat, init_attn after input block 0, the fps embedding, skips). The
converted model must give that forward's output; the full released configs must map every key both ways; what
cannot be converted is refused by name.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

import moviola
from moviola import Conditioning
from moviola.cli import main
from moviola.config import load_config
from moviola.interop import videocrafter_to_moviola
from moviola.interop.common import model_on_meta
from moviola.io.checkpoint import CheckpointError

torch.set_num_threads(1)

# ------------------------------------------------------------------ the official layout, written out

def official_unet(cfg: dict, device: str = "cpu", seed: int = 0, scale: float = 0.05):
    """(state dict under the official names, layout) of an lvdm UNetModel with these arguments (official names).
    layout: {"input": [[layer, ...], ...], "middle": [...], "output": [[...], ...]}, a layer being
    ("conv" | "res" | "down" | "up", prefix) or ("spatial" | "temporal", prefix, heads, head_dim)."""
    C, E = cfg["model_channels"], 4 * cfg["model_channels"]
    nhc, ctx, depth = cfg["num_head_channels"], cfg["context_dim"], cfg.get("transformer_depth", 1)
    selfonly, rel = cfg.get("temporal_selfatt_only", True), cfg.get("use_relative_position", True)
    L = cfg.get("temporal_length")
    shapes: dict[str, tuple] = {}

    def add(name, *shape):
        assert name not in shapes, name
        shapes[name] = shape

    def linear(k, i, o, bias=True):
        add(f"{k}.weight", o, i)
        if bias:
            add(f"{k}.bias", o)

    def conv(k, i, o, *kernel):
        add(f"{k}.weight", o, i, *kernel)
        add(f"{k}.bias", o)

    def norm(k, c):
        add(f"{k}.weight", c)
        add(f"{k}.bias", c)

    def res(k, cin, cout):
        norm(f"{k}.in_layers.0", cin)
        conv(f"{k}.in_layers.2", cin, cout, 3, 3)
        linear(f"{k}.emb_layers.1", E, cout)
        norm(f"{k}.out_layers.0", cout)
        conv(f"{k}.out_layers.3", cout, cout, 3, 3)
        if cin != cout:
            conv(f"{k}.skip_connection", cin, cout, 1, 1)
        if cfg.get("temporal_conv"):
            for i, j in ((1, 2), (2, 3), (3, 3), (4, 3)):  # conv1: norm, silu, conv; conv2-4: + a dropout first
                norm(f"{k}.temopral_conv.conv{i}.0", cout)
                conv(f"{k}.temopral_conv.conv{i}.{j}", cout, cout, 3, 1, 1)
        return ("res", k)

    def transformer(k, ch, heads, d, temporal, proj_linear):
        inner = heads * d
        norm(f"{k}.norm", ch)
        kernel = () if proj_linear else ((1,) if temporal else (1, 1))
        conv(f"{k}.proj_in", ch, inner, *kernel) if kernel else linear(f"{k}.proj_in", ch, inner)
        for n in range(depth):
            b = f"{k}.transformer_blocks.{n}"
            for a in ("attn1", "attn2"):
                source = inner if a == "attn1" or (temporal and selfonly) else ctx
                linear(f"{b}.{a}.to_q", inner, inner, bias=False)
                linear(f"{b}.{a}.to_k", source, inner, bias=False)
                linear(f"{b}.{a}.to_v", source, inner, bias=False)
                linear(f"{b}.{a}.to_out.0", inner, inner)
                if temporal and rel:
                    add(f"{b}.{a}.relative_position_k.embeddings_table", 2 * L + 1, d)
                    add(f"{b}.{a}.relative_position_v.embeddings_table", 2 * L + 1, d)
                if not temporal and a == "attn2" and cfg.get("use_image_attention"):
                    linear(f"{b}.attn2.to_k_ip", ctx, inner, bias=False)
                    linear(f"{b}.attn2.to_v_ip", ctx, inner, bias=False)
            for i in (1, 2, 3):
                norm(f"{b}.norm{i}", inner)
            linear(f"{b}.ff.net.0.proj", inner, 8 * inner)  # GEGLU to 4·inner
            linear(f"{b}.ff.net.2", 4 * inner, inner)
        conv(f"{k}.proj_out", inner, ch, *kernel) if kernel else linear(f"{k}.proj_out", inner, ch)
        return ("temporal" if temporal else "spatial", k, heads, d)

    linear("time_embed.0", C, E)
    linear("time_embed.2", E, E)
    if cfg.get("fps_cond"):
        linear("fps_embedding.0", C, E)
        linear("fps_embedding.2", E, E)
    layout: dict = {"input": [], "output": []}
    conv("input_blocks.0.0", cfg["in_channels"], C, 3, 3)
    layout["input"].append([("conv", "input_blocks.0.0")])
    if cfg.get("addition_attention"):  # built without use_linear: Conv1d projections; 8 heads of num_head_channels
        layout["init"] = transformer("init_attn.0", C, 8, nhc, True, proj_linear=False)
    chans, ch, ds, idx = [C], C, 1, 1
    mult, attn = cfg["channel_mult"], cfg["attention_resolutions"]
    for level, m in enumerate(mult):
        for _ in range(cfg["num_res_blocks"]):
            block = [res(f"input_blocks.{idx}.0", ch, m * C)]
            ch = m * C
            if ds in attn:
                block += [transformer(f"input_blocks.{idx}.1", ch, ch // nhc, nhc, False, cfg["use_linear"]),
                          transformer(f"input_blocks.{idx}.2", ch, ch // nhc, nhc, True, cfg["use_linear"])]
            layout["input"].append(block)
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{idx}.0.op", ch, ch, 3, 3)
            layout["input"].append([("down", f"input_blocks.{idx}.0.op")])
            chans.append(ch)
            idx += 1
            ds *= 2
    layout["middle"] = [res("middle_block.0", ch, ch),
                        transformer("middle_block.1", ch, ch // nhc, nhc, False, cfg["use_linear"]),
                        transformer("middle_block.2", ch, ch // nhc, nhc, True, cfg["use_linear"]),
                        res("middle_block.3", ch, ch)]
    idx = 0
    for level, m in reversed(list(enumerate(mult))):
        for i in range(cfg["num_res_blocks"] + 1):
            block = [res(f"output_blocks.{idx}.0", ch + chans.pop(), m * C)]
            ch = m * C
            if ds in attn:
                block += [transformer(f"output_blocks.{idx}.1", ch, ch // nhc, nhc, False, cfg["use_linear"]),
                          transformer(f"output_blocks.{idx}.2", ch, ch // nhc, nhc, True, cfg["use_linear"])]
            if level and i == cfg["num_res_blocks"]:
                conv(f"output_blocks.{idx}.{len(block)}.conv", ch, ch, 3, 3)
                block.append(("up", f"output_blocks.{idx}.{len(block)}.conv"))
                ds //= 2
            layout["output"].append(block)
            idx += 1
    norm("out.0", C)
    conv("out.2", C, cfg["out_channels"], 3, 3)

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if device == "meta":
            sd[k] = torch.empty(shape, device="meta")
        elif len(shape) == 1 and k.endswith(".weight"):  # a norm's scale
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = scale * torch.randn(shape, generator=g)
    return sd, layout


def official_resampler(dim, depth, heads, queries, embedding_dim, output_dim, device="cpu", seed=1, dim_head=64):
    """``image_proj_model.*`` of LatentVisualDiffusion (finegrained): ip_resampler.Resampler's names and shapes."""
    shapes = {"image_proj_model.latents": (1, queries, dim), "image_proj_model.proj_in.weight": (dim, embedding_dim),
              "image_proj_model.proj_in.bias": (dim,), "image_proj_model.proj_out.weight": (output_dim, dim),
              "image_proj_model.proj_out.bias": (output_dim,), "image_proj_model.norm_out.weight": (output_dim,),
              "image_proj_model.norm_out.bias": (output_dim,)}
    inner = heads * dim_head
    for i in range(depth):
        k = f"image_proj_model.layers.{i}"
        shapes.update({f"{k}.0.norm1.weight": (dim,), f"{k}.0.norm1.bias": (dim,), f"{k}.0.norm2.weight": (dim,),
                       f"{k}.0.norm2.bias": (dim,), f"{k}.0.to_q.weight": (inner, dim),
                       f"{k}.0.to_kv.weight": (2 * inner, dim), f"{k}.0.to_out.weight": (dim, inner),
                       f"{k}.1.0.weight": (dim,), f"{k}.1.0.bias": (dim,), f"{k}.1.1.weight": (4 * dim, dim),
                       f"{k}.1.3.weight": (dim, 4 * dim)})
    g = torch.Generator().manual_seed(seed)
    if device == "meta":
        return {k: torch.empty(v, device="meta") for k, v in shapes.items()}
    return {k: (1 + 0.1 * torch.randn(v, generator=g)) if len(v) == 1 and k.endswith("weight")
            else 0.1 * torch.randn(v, generator=g) for k, v in shapes.items()}


def official_resample(sd, tokens, heads, dim_head=64):
    """ip_resampler.Resampler.forward: learned latents attend to [proj_in(tokens); latents] (q and k each scaled
    by dim_head^-1/4, softmax in float32), a LayerNorm-GELU feed-forward, proj_out, norm_out."""
    def ln(z, k):
        return F.layer_norm(z, z.shape[-1:], sd[f"{k}.weight"], sd[f"{k}.bias"])

    p = "image_proj_model"
    lat = sd[f"{p}.latents"].repeat(tokens.shape[0], 1, 1)
    x = F.linear(tokens, sd[f"{p}.proj_in.weight"], sd[f"{p}.proj_in.bias"])
    depth = len({k.split(".")[2] for k in sd if k.startswith(f"{p}.layers.")})
    for i in range(depth):
        k = f"{p}.layers.{i}"
        xn, ln_lat = ln(x, f"{k}.0.norm1"), ln(lat, f"{k}.0.norm2")
        q = F.linear(ln_lat, sd[f"{k}.0.to_q.weight"])
        kk, v = F.linear(torch.cat([xn, ln_lat], dim=1), sd[f"{k}.0.to_kv.weight"]).chunk(2, dim=-1)

        def heads_first(y):  # (b, n, h·d) -> (b, h, n, d)
            return y.reshape(y.shape[0], y.shape[1], heads, -1).transpose(1, 2)

        q, kk, v = heads_first(q), heads_first(kk), heads_first(v)
        s = dim_head ** -0.25
        w = torch.softmax(((q * s) @ (kk * s).transpose(-2, -1)).float(), dim=-1).type(q.dtype)
        out = (w @ v).permute(0, 2, 1, 3).reshape(lat.shape[0], lat.shape[1], -1)
        lat = F.linear(out, sd[f"{k}.0.to_out.weight"]) + lat
        h = F.gelu(F.linear(ln(lat, f"{k}.1.0"), sd[f"{k}.1.1.weight"]))
        lat = F.linear(h, sd[f"{k}.1.3.weight"]) + lat
    return ln(F.linear(lat, sd[f"{p}.proj_out.weight"], sd[f"{p}.proj_out.bias"]), f"{p}.norm_out")


def timestep_embedding(t, dim):
    """lvdm's: [cos, sin] of t · exp(-ln(10⁴) · i / half), in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def official_forward(sd, layout, cfg, x, t, context, fps=None):
    """lvdm's UNetModel.forward (no xformers, no adapter) on x (b, c, t, h, w); ``context`` is the text, or for
    image-to-video ``[text (77 tokens); resampled image tokens]`` (LatentVisualDiffusion's c_crossattn)."""
    def lin(z, k):
        return F.linear(z, sd[f"{k}.weight"], sd.get(f"{k}.bias"))

    def gn(z, k, eps):
        return F.group_norm(z, 32, sd[f"{k}.weight"], sd[f"{k}.bias"], eps)

    def ln(z, k):
        return F.layer_norm(z, z.shape[-1:], sd[f"{k}.weight"], sd[f"{k}.bias"])

    def attention(k, z, heads, d, ctx=None, mask=None):
        q = F.linear(z, sd[f"{k}.to_q.weight"])
        src = z if ctx is None else ctx
        image = None
        if ctx is not None and f"{k}.to_k_ip.weight" in sd:  # the official split of [text; image] at 77 tokens
            src, image = ctx[:, :77], ctx[:, 77:]
        kk, v = F.linear(src, sd[f"{k}.to_k.weight"]), F.linear(src, sd[f"{k}.to_v.weight"])

        def split(y):  # 'b n (h d) -> (b h) n d'
            return y.reshape(y.shape[0], y.shape[1], heads, d).permute(0, 2, 1, 3).reshape(-1, y.shape[1], d)

        q, kk, v = split(q), split(kk), split(v)
        sim = q @ kk.transpose(1, 2) * d ** -0.5
        table = f"{k}.relative_position_k.embeddings_table"
        if table in sd:
            m = (sd[table].shape[0] - 1) // 2
            dist = (torch.arange(kk.shape[1])[None, :] - torch.arange(q.shape[1])[:, None]).clamp(-m, m) + m
            sim = sim + torch.einsum("btd,tsd->bts", q, sd[table][dist]) * d ** -0.5
        if mask is not None:
            sim = sim.masked_fill(~(mask > 0.5), -torch.finfo(sim.dtype).max)
        p = sim.softmax(dim=-1)
        out = p @ v
        if table in sd:
            out = out + torch.einsum("bts,tsd->btd", p, sd[f"{k}.relative_position_v.embeddings_table"][dist])
        n = out.shape[1]
        out = out.reshape(-1, heads, n, d).permute(0, 2, 1, 3).reshape(-1, n, heads * d)  # '(b h) n d -> b n (h d)'
        if image is not None:  # the same query on the image tokens, its own keys and values, scale 1.0
            k_ip = split(F.linear(image, sd[f"{k}.to_k_ip.weight"]))
            v_ip = split(F.linear(image, sd[f"{k}.to_v_ip.weight"]))
            out_ip = (q @ k_ip.transpose(1, 2) * d ** -0.5).softmax(dim=-1) @ v_ip
            out = out + 1.0 * out_ip.reshape(-1, heads, n, d).permute(0, 2, 1, 3).reshape(-1, n, heads * d)
        return lin(out, f"{k}.to_out.0")

    def block(k, z, heads, d, ctx=None, mask=None):
        z = attention(f"{k}.attn1", ln(z, f"{k}.norm1"), heads, d, None, mask) + z
        z = attention(f"{k}.attn2", ln(z, f"{k}.norm2"), heads, d, ctx, mask) + z
        a, gate = lin(ln(z, f"{k}.norm3"), f"{k}.ff.net.0.proj").chunk(2, dim=-1)
        return lin(a * F.gelu(gate), f"{k}.ff.net.2") + z

    def depth(k):
        return len({key.split(".")[len(k.split(".")) + 1] for key in sd if key.startswith(f"{k}.transformer_blocks.")})

    def spatial(k, z, heads, d, ctx):
        n, _, h, w = z.shape
        y = gn(z, f"{k}.norm", 1e-6)
        conv_proj = sd[f"{k}.proj_in.weight"].dim() == 4
        if conv_proj:
            y = F.conv2d(y, sd[f"{k}.proj_in.weight"], sd[f"{k}.proj_in.bias"])
        y = y.flatten(2).transpose(1, 2)  # 'b c h w -> b (h w) c'
        if not conv_proj:
            y = lin(y, f"{k}.proj_in")
        for i in range(depth(k)):
            y = block(f"{k}.transformer_blocks.{i}", y, heads, d, ctx)
        if not conv_proj:
            y = lin(y, f"{k}.proj_out")
        y = y.transpose(1, 2).reshape(n, -1, h, w)
        if conv_proj:
            y = F.conv2d(y, sd[f"{k}.proj_out.weight"], sd[f"{k}.proj_out.bias"])
        return y + z

    def temporal(k, z, heads, d, ctx, b):
        bt, c, h, w = z.shape
        T = bt // b
        v = z.reshape(b, T, c, h, w).permute(0, 2, 1, 3, 4)  # '(b f) c h w -> b c f h w'
        y = gn(v, f"{k}.norm", 1e-6)
        y = y.permute(0, 3, 4, 1, 2).reshape(b * h * w, c, T)  # 'b c t h w -> (b h w) c t'
        conv_proj = sd[f"{k}.proj_in.weight"].dim() == 3
        if conv_proj:
            y = F.conv1d(y, sd[f"{k}.proj_in.weight"], sd[f"{k}.proj_in.bias"])
        y = y.transpose(1, 2)  # 'bhw c t -> bhw t c'
        if not conv_proj:
            y = lin(y, f"{k}.proj_in")
        mask = None
        if cfg.get("use_causal_attention"):
            L = cfg["temporal_length"]
            mask = torch.tril(torch.ones(1, L, L)).repeat(b * h * w * heads, 1, 1)
        if cfg.get("temporal_selfatt_only", True):
            for i in range(depth(k)):
                y = block(f"{k}.transformer_blocks.{i}", y, heads, d, None, mask)
            y = y.reshape(b, h * w, T, -1)
        else:
            y = y.reshape(b, h * w, T, -1).clone()
            text = ctx.reshape(b, T, ctx.shape[1], ctx.shape[2])  # '(b t) l con -> b t l con'
            for i in range(depth(k)):
                for j in range(b):
                    ctx_j = text[j].repeat_interleave((h * w) // T, dim=0)  # 't l con -> (t r) l con'
                    y[j] = block(f"{k}.transformer_blocks.{i}", y[j], heads, d, ctx_j)  # no mask here
        if not conv_proj:
            y = lin(y, f"{k}.proj_out")
            y = y.reshape(b, h, w, T, c).permute(0, 4, 3, 1, 2)  # 'b (h w) t c -> b c t h w'
        else:
            y = F.conv1d(y.reshape(b * h * w, T, -1).transpose(1, 2), sd[f"{k}.proj_out.weight"],
                         sd[f"{k}.proj_out.bias"])  # '(b hw) c t'
            y = y.reshape(b, h, w, c, T).permute(0, 3, 4, 1, 2)
        out = y + v
        return out.permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)

    def resblock(k, z, emb, b):
        y = F.conv2d(F.silu(gn(z, f"{k}.in_layers.0", 1e-5)), sd[f"{k}.in_layers.2.weight"],
                     sd[f"{k}.in_layers.2.bias"], padding=1)
        y = y + lin(F.silu(emb), f"{k}.emb_layers.1")[:, :, None, None]
        y = F.conv2d(F.silu(gn(y, f"{k}.out_layers.0", 1e-5)), sd[f"{k}.out_layers.3.weight"],
                     sd[f"{k}.out_layers.3.bias"], padding=1)
        skip = z if f"{k}.skip_connection.weight" not in sd else F.conv2d(z, sd[f"{k}.skip_connection.weight"],
                                                                          sd[f"{k}.skip_connection.bias"])
        y = skip + y
        if f"{k}.temopral_conv.conv1.2.weight" in sd:
            bt, c, h, w = y.shape
            v = y.reshape(b, bt // b, c, h, w).permute(0, 2, 1, 3, 4)
            r = v
            for i, j in ((1, 2), (2, 3), (3, 3), (4, 3)):
                r = F.silu(F.group_norm(r, 32, sd[f"{k}.temopral_conv.conv{i}.0.weight"],
                                        sd[f"{k}.temopral_conv.conv{i}.0.bias"], 1e-5))
                r = F.conv3d(r, sd[f"{k}.temopral_conv.conv{i}.{j}.weight"], sd[f"{k}.temopral_conv.conv{i}.{j}.bias"],
                             padding=(1, 0, 0))
            y = (r + v).permute(0, 2, 1, 3, 4).reshape(bt, c, h, w)
        return y

    def run(layers, z, emb, ctx, b):
        for layer in layers:
            kind, k = layer[:2]
            if kind == "conv":
                z = F.conv2d(z, sd[f"{k}.weight"], sd[f"{k}.bias"], padding=1)
            elif kind == "res":
                z = resblock(k, z, emb, b)
            elif kind == "down":
                z = F.conv2d(z, sd[f"{k}.weight"], sd[f"{k}.bias"], stride=2, padding=1)
            elif kind == "up":
                z = F.conv2d(F.interpolate(z, scale_factor=2, mode="nearest"), sd[f"{k}.weight"], sd[f"{k}.bias"],
                             padding=1)
            elif kind == "spatial":
                z = spatial(k, z, layer[2], layer[3], ctx)
            else:
                z = temporal(k, z, layer[2], layer[3], ctx, b)
        return z

    C = cfg["model_channels"]
    b, _, T, H, W = x.shape
    emb = lin(F.silu(lin(timestep_embedding(t, C).to(x.dtype), "time_embed.0")), "time_embed.2")
    if cfg.get("fps_cond"):
        emb = emb + lin(F.silu(lin(timestep_embedding(fps, C).to(x.dtype), "fps_embedding.0")), "fps_embedding.2")
    ctx = context.repeat_interleave(T, dim=0)
    emb = emb.repeat_interleave(T, dim=0)
    h = x.permute(0, 2, 1, 3, 4).reshape(b * T, x.shape[1], H, W)  # 'b c t h w -> (b t) c h w'
    hs = []
    for i, layers in enumerate(layout["input"]):
        h = run(layers, h, emb, ctx, b)
        if i == 0 and "init" in layout:
            h = run([layout["init"]], h, emb, ctx, b)
        hs.append(h)
    h = run(layout["middle"], h, emb, ctx, b)
    for layers in layout["output"]:
        h = run(layers, torch.cat([h, hs.pop()], dim=1), emb, ctx, b)
    h = F.conv2d(F.silu(gn(h, "out.0", 1e-5)), sd["out.2.weight"], sd["out.2.bias"], padding=1)
    return h.reshape(b, T, -1, H, W).permute(0, 2, 1, 3, 4)


# ------------------------------------------------------------------ configs
# the released configs' unet_config.params (configs/inference_*.yaml)
VC2_512 = dict(in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1], num_res_blocks=2,
               channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024, use_linear=True,
               use_checkpoint=True, temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
               use_relative_position=False, use_causal_attention=False, temporal_length=16, addition_attention=True,
               fps_cond=True)
VC1_512 = {**VC2_512, "temporal_conv": False, "use_relative_position": True}
del VC1_512["fps_cond"]
VC1_1024 = {**VC1_512, "fps_cond": True}
I2V_512 = {**VC2_512, "use_image_attention": True}

# tiny variants for the numbers, each exercising other parts of the official code
TINY = dict(in_channels=4, out_channels=4, model_channels=32, num_head_channels=16, context_dim=24, transformer_depth=1,
            use_causal_attention=False, temporal_attention=True, temporal_selfatt_only=True)
VARIANTS = {
    # VC2: temporal convolutions, fps, linear projections, init_attn; 3 levels, attention at two
    "vc2": dict(TINY, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[1, 2], use_linear=True,
                temporal_conv=True, use_relative_position=False, temporal_length=16, addition_attention=True,
                fps_cond=True),
    # VC1: relative positions clipped at ±1 (T = 3), 1×1-conv / Conv1d projections, attention at the lower level
    # only, two ResBlocks a level
    "vc1": dict(TINY, channel_mult=[1, 2], num_res_blocks=2, attention_resolutions=[2], use_linear=False,
                temporal_conv=False, use_relative_position=True, temporal_length=1, addition_attention=True),
    # causal temporal attention (T = temporal_length), relative positions, fps, no init_attn: heads from the tables
    "causal": dict(TINY, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1], use_linear=True,
                   temporal_conv=True, use_relative_position=True, temporal_length=3, use_causal_attention=True,
                   addition_attention=False, fps_cond=True),
    # temporal cross-attention to the text (its causal flag is not applied by the official code), on a 6×8 latent
    "cross": dict(TINY, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[1, 2], use_linear=True,
                  temporal_conv=True, use_relative_position=False, temporal_length=3, use_causal_attention=True,
                  temporal_selfatt_only=False, addition_attention=True, fps_cond=True),
}


def official_config_yaml(unet_params: dict, **model_params) -> dict:
    return {"model": {"target": "lvdm.models.ddpm3d.LatentDiffusion",
                      "params": {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000,
                                 "conditioning_key": "crossattn", "image_size": [40, 64], "channels": 4,
                                 "scale_factor": 0.18215, **model_params,
                                 "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel",
                                                 "params": unet_params}}}}


def lightning(unet_sd: dict, use_scale: bool = True) -> dict:
    """A LatentDiffusion state dict: the U-Net under model.diffusion_model., a VAE and text-encoder tensor, the
    schedule buffers (lvdm's linear betas, 0.00085 .. 0.012)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    sd = {f"model.diffusion_model.{k}": v for k, v in unet_sd.items()}
    sd.update({"first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
               "cond_stage_model.model.positional_embedding": torch.zeros(77, 8),
               "betas": betas.float(), "alphas_cumprod": torch.cumprod(1 - betas, 0).float()})
    if use_scale:
        sd["scale_arr"] = torch.cat([torch.linspace(1, 0.7, 400), torch.full((1000,), 0.7)])
    return sd


# ------------------------------------------------------------------ every released layout: the full key set

@pytest.mark.parametrize("name, params", [("vc2_512", VC2_512), ("vc1_512", VC1_512), ("vc1_1024", VC1_1024)])
@pytest.mark.parametrize("with_yaml", [False, True])
def test_released_layouts_map_every_key_both_ways(name, params, with_yaml):
    unet_sd, _ = official_unet({**UNET_DEFAULTS_FOR_TEST, **params}, device="meta")
    # without the YAML a Lightning state dict, with it a bare UNetModel state dict
    info, out, notes = videocrafter_to_moviola(unet_sd if with_yaml else lightning(unet_sd),
                                               dict(params) if with_yaml else None)
    m = info["model"]
    assert m["size"] == "vc512" and m["block_out_channels"] == [320, 640, 1280, 1280] and m["head_channels"] == 64
    assert m["attention_resolutions"] == [1, 2, 4] and m["layers_per_block"] == 2 and m["use_linear_projection"]
    assert m["temporal_conv"] == params["temporal_conv"]
    assert m["relative_position"] == params["use_relative_position"] and m["temporal_length"] == 16
    assert m["addition_attention"] and m["input_attention_heads"] == 8 and m["input_attention_head_channels"] == 64
    assert info["conditions"] == {"text_channels": 1024, "fps": bool(params.get("fps_cond")), "image": False}
    assert with_yaml or (any("first_stage_model" in n for n in notes) and any("cond_stage_model" in n for n in notes))
    # both ways: every official tensor in exactly one moviola tensor, every moviola tensor filled
    assert len(out) == len(unet_sd)
    cfg = load_config(data={"model": m, "conditions": info["conditions"],
                                           "data": {"dataset": "folder", "root": "x", "size": 64, "frames": 16}})
    expected = model_on_meta(cfg, 4).state_dict()
    assert set(out) == set(expected)
    assert all(tuple(out[k].shape) == tuple(expected[k].shape) for k in expected)
    sources = {id(v) for v in unet_sd.values()}
    squeezed = [k for k, v in out.items() if id(v) not in sources]  # init_attn's Conv1d projections only
    assert sorted(squeezed) == ["unet.transformer_in.proj_in.weight", "unet.transformer_in.proj_out.weight"]
    # spot checks of the table
    for official, ours in [
            ("input_blocks.1.0.in_layers.2.weight", "unet.down_blocks.0.resnets.0.conv1.weight"),
            ("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
             "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
            ("input_blocks.3.0.op.weight", "unet.down_blocks.0.downsamplers.0.conv.weight"),
            ("input_blocks.4.0.skip_connection.weight", "unet.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("input_blocks.11.0.emb_layers.1.weight", "unet.down_blocks.3.resnets.1.time_emb_proj.weight"),
            ("middle_block.2.proj_out.bias", "unet.mid_block.temp_attentions.0.proj_out.bias"),
            ("middle_block.3.out_layers.3.weight", "unet.mid_block.resnets.1.conv2.weight"),
            ("output_blocks.2.1.conv.weight", "unet.up_blocks.0.upsamplers.0.conv.weight"),
            ("output_blocks.5.3.conv.weight", "unet.up_blocks.1.upsamplers.0.conv.weight"),
            ("output_blocks.11.2.norm.weight", "unet.up_blocks.3.temp_attentions.2.norm.weight"),
            ("time_embed.2.weight", "unet.time_embedding.linear_2.weight"), ("out.2.bias", "unet.conv_out.bias")]:
        assert out[ours] is unet_sd[official], official
    if params["temporal_conv"]:
        k = "conv4.3.weight"
        assert out[f"unet.up_blocks.2.temp_convs.1.{k}"] is unet_sd[f"output_blocks.7.0.temopral_conv.{k}"]
    if params["use_relative_position"]:
        k = "transformer_blocks.0.attn2.relative_position_v.embeddings_table"
        assert out[f"unet.down_blocks.1.temp_attentions.1.{k}"] is unet_sd[f"input_blocks.5.2.{k}"]
        assert tuple(unet_sd[f"input_blocks.5.2.{k}"].shape) == (33, 64)
    if params.get("fps_cond"):
        assert out["fps_embedding.linear_1.weight"] is unet_sd["fps_embedding.0.weight"]


UNET_DEFAULTS_FOR_TEST = dict(use_relative_position=True, temporal_selfatt_only=True)  # lvdm UNetModel's defaults


def test_the_image_to_video_layout_maps_every_key_both_ways():
    unet_sd, _ = official_unet(I2V_512, device="meta")
    proj = official_resampler(1024, 4, 12, 16, 1280, 1024, device="meta")  # init_projector's Resampler
    sd = {**lightning(unet_sd), **proj, "embedder.model.visual.conv1.weight": torch.empty(8, 3, 14, 14, device="meta")}
    info, out, notes = videocrafter_to_moviola(sd, dict(I2V_512))
    m = info["model"]
    assert (m["image_encoder"], m["image_token_dim"], m["resampler_queries"], m["resampler_depth"], m["resampler_dim"],
            m["resampler_heads"], m["resampler_head_channels"], m["image_scale"]) == (
        "tokens", 1280, 16, 4, 1024, 12, 64, 1.0)
    assert info["conditions"]["image"] is True
    assert len(out) == len(unet_sd) + len(proj)
    cfg = load_config(data={"model": m, "conditions": info["conditions"],  # a checkpoint's: no image.encoder
                            "data": {"dataset": "folder", "root": "x", "size": 64, "frames": 16}}, checkpoint=True)
    expected = model_on_meta(cfg, 4).state_dict()
    assert set(out) == set(expected) and all(tuple(out[k].shape) == tuple(expected[k].shape) for k in expected)
    k = "transformer_blocks.0.attn2.to_v_ip.weight"
    assert out[f"unet.up_blocks.1.attentions.2.{k}"] is unet_sd[f"output_blocks.5.1.{k}"]
    assert out["image_proj_model.layers.3.1.3.weight"] is proj["image_proj_model.layers.3.1.3.weight"]
    assert sum("_ip." in k for k in out) == 32  # 16 spatial transformers
    assert any("embedder.*" in n for n in notes) and any("image_tokens" in n for n in notes)


def test_image_to_video_layouts_moviola_cannot_compute_are_refused_by_name():
    unet_sd, _ = official_unet(I2V_512, device="meta")
    with pytest.raises(CheckpointError, match="no image_proj_model"):  # a bare U-Net: no resampler
        videocrafter_to_moviola(unet_sd)
    image_proj = {"image_proj_model.proj.weight": torch.empty(4096, 1024, device="meta"),
                  "image_proj_model.proj.bias": torch.empty(4096, device="meta"),
                  "image_proj_model.norm.weight": torch.empty(1024, device="meta"),
                  "image_proj_model.norm.bias": torch.empty(1024, device="meta")}
    with pytest.raises(CheckpointError, match="ImageProjModel"):  # finegrained=false
        videocrafter_to_moviola({**lightning(unet_sd), **image_proj})
    t2v, _ = official_unet(VC2_512, device="meta")
    with pytest.raises(CheckpointError, match="without image cross-attention"):
        videocrafter_to_moviola({**lightning(t2v), **official_resampler(1024, 4, 12, 16, 1280, 1024, device="meta")})


# ------------------------------------------------------------------ numbers: the official output

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_checkpoint_gives_the_official_output(tmp_path, vae_dir, variant, capsys):
    cfg = VARIANTS[variant]
    unet_sd, layout = official_unet(cfg, seed=3)
    torch.save({"state_dict": lightning(unet_sd), "epoch": 7, "global_step": 1234}, tmp_path / "model.ckpt")
    args = ["convert", "videocrafter", str(tmp_path / "model.ckpt"), str(tmp_path / "out"), "--vae", str(vae_dir)]
    if variant in ("causal", "cross"):  # the causal flag is not in the weights: the YAML gives it
        (tmp_path / "vc.yaml").write_text(yaml.safe_dump(official_config_yaml(cfg, use_scale=True, scale_b=0.7)))
        args += ["--config", str(tmp_path / "vc.yaml")]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "not converted: first_stage_model.*" in captured.out and "use_scale" in captured.err
    model = moviola.load_model(tmp_path / "out").eval()
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["model"]["causal_attention"] == (variant == "causal")
    assert written["diffusion"]["schedule"] == "scaled_linear"  # lvdm's "linear"
    assert written["diffusion"]["beta_end"] == pytest.approx(0.012)
    assert written["conditions"]["fps"] == bool(cfg.get("fps_cond"))
    # use_scale and the official DDIM's timesteps: sampled as the official sampler does
    assert written["diffusion"]["x0_scale"] == {"scale_a": 1.0, "scale_b": pytest.approx(0.7), "mid_step": 400}
    assert (written["diffusion"]["steps_offset"], written["diffusion"]["final_alpha"]) == (1, "first")

    g = torch.Generator().manual_seed(11)
    size = (6, 8) if variant == "cross" else (8, 8)  # cross: the official needs H·W divisible by T at every level
    x = torch.randn(2, 4, 3, *size, generator=g)
    t = torch.tensor([10, 700])
    text = torch.randn(2, 5, 24, generator=g)
    fps = torch.tensor([8.0, 28.0]) if cfg.get("fps_cond") else None
    cond = Conditioning(text=text, fps=fps) if fps is not None else Conditioning(text=text)
    with torch.no_grad():
        ours = model(x, t, cond)
        ref = official_forward(unet_sd, layout, cfg, x, t, text, fps)
        err = (ours - ref).abs().max().item()
        model64 = model.double()
        cond64 = Conditioning(text=text.double(), fps=fps)
        err64 = (model64(x.double(), t, cond64) - official_forward(
            {k: v.double() for k, v in unet_sd.items()}, layout, cfg, x.double(), t, text.double(), fps)).abs().max()
    print(f"videocrafter {variant}: max |ours − official| fp32 {err:.2e}, fp64 {err64.item():.2e}, "
          f"output scale {ref.abs().max().item():.2f}")
    assert ref.shape == ours.shape == (2, 4, 3, *size)
    # moviola's relative-position attention takes its softmax in float32 (nn/temporal.py), in float64 too
    assert err < 1e-4 and err64 < (1e-6 if cfg["use_relative_position"] else 1e-9), (err, err64)
    assert ref.abs().max() > 0.1  # not a trivially zero output


def test_converted_image_to_video_checkpoint_gives_the_official_output(tmp_path, vae_dir, capsys):
    cfg = dict(VARIANTS["vc2"], use_image_attention=True)
    unet_sd, layout = official_unet(cfg, seed=4)
    proj = official_resampler(32, 2, 1, 4, 40, 24, seed=5)
    torch.save({"state_dict": {**lightning(unet_sd), **proj}}, tmp_path / "i2v.ckpt")
    tree = official_config_yaml(cfg, use_scale=True, scale_b=0.7, finegrained=True)
    tree["model"]["target"] = "lvdm.models.ddpm3d.LatentVisualDiffusion"
    (tmp_path / "i2v.yaml").write_text(yaml.safe_dump(tree))
    assert main(["convert", "videocrafter", str(tmp_path / "i2v.ckpt"), str(tmp_path / "out"), "--vae", str(vae_dir),
                 "--config", str(tmp_path / "i2v.yaml")]) == 0
    assert "image_tokens" in capsys.readouterr().out
    model = moviola.load_model(tmp_path / "out").eval()
    g = torch.Generator().manual_seed(12)
    x, t = torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor([999, 1])
    text = torch.randn(2, 77, 24, generator=g)  # the official splits [text; image] at 77 tokens
    tokens, fps = torch.randn(2, 6, 40, generator=g), torch.tensor([8.0, 16.0])
    with torch.no_grad():
        ours = model(x, t, Conditioning(text=text, fps=fps, image_tokens=tokens))
        context = torch.cat([text, official_resample(proj, tokens, heads=1)], dim=1)  # LatentVisualDiffusion
        ref = official_forward(unet_sd, layout, cfg, x, t, context, fps)
        no_image = official_forward(unet_sd, layout, cfg, x, t, torch.cat([text, torch.zeros(2, 4, 24)], dim=1), fps)
    err = (ours - ref).abs().max().item()
    print(f"videocrafter i2v: max |ours − official| {err:.2e}")
    assert err < 1e-4
    assert (ref - no_image).abs().max() > 1e-2  # the image tokens matter in the comparison


def test_temporal_layers_matter_in_the_comparison(tmp_path, vae_dir):
    """The comparison can fail: the reference's output depends on the relative-position tables of a temporal
    transformer deep in the network (the converted model must place them exactly)."""
    cfg = VARIANTS["vc1"]
    unet_sd, layout = official_unet(cfg, seed=3)
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.tensor([50]), torch.randn(1, 5, 24, generator=g)
    base = official_forward(unet_sd, layout, cfg, x, t, text)
    k = "middle_block.2.transformer_blocks.0.attn1.relative_position_k.embeddings_table"
    bumped = dict(unet_sd, **{k: unet_sd[k] + torch.randn(unet_sd[k].shape, generator=g)})  # a constant would cancel
    assert (official_forward(bumped, layout, cfg, x, t, text) - base).abs().max() > 1e-3


# ------------------------------------------------------------------ refusals

def _tiny_ckpt(tmp_path, edit=None, name="model.ckpt", variant="vc2"):
    unet_sd, _ = official_unet(VARIANTS[variant])
    sd = lightning(unet_sd)
    if edit is not None:
        edit(sd)
    torch.save({"state_dict": sd}, tmp_path / name)
    return tmp_path / name


def _convert(tmp_path, vae_dir, src, *extra):
    return main(["convert", "videocrafter", str(src), str(tmp_path / "out"), "--vae", str(vae_dir), *extra])


def test_unknown_keys_are_listed(tmp_path, vae_dir, capsys):
    def edit(sd):
        for i in range(10):
            sd[f"model.diffusion_model.input_blocks.1.0.extra_{i}.weight"] = torch.zeros(2)
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path, edit)) == 2
    err = capsys.readouterr().err
    assert "unknown keys input_blocks.1.0.extra_0.weight" in err and "(10 in all)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()

    def top(sd):
        sd["some_head.weight"] = torch.zeros(2)
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path, top, "b.ckpt")) == 2
    assert "unknown keys some_head.weight" in capsys.readouterr().err


def test_missing_keys_are_listed(tmp_path, vae_dir, capsys):
    def edit(sd):
        del sd["model.diffusion_model.output_blocks.3.2.transformer_blocks.0.ff.net.2.bias"]
        del sd["model.diffusion_model.input_blocks.1.0.temopral_conv.conv3.3.weight"]
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path, edit)) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and "output_blocks.3.2.transformer_blocks.0.ff.net.2.bias" in err
    assert "input_blocks.1.0.temopral_conv.conv3.3.weight" in err and "(2)" in err
    assert not (tmp_path / "out").exists()


def test_a_truncated_file_is_a_one_line_error(tmp_path, vae_dir, capsys):
    src = _tiny_ckpt(tmp_path)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    assert _convert(tmp_path, vae_dir, src) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "truncated" in err
    assert not (tmp_path / "out").exists()


def test_a_latte_checkpoint_is_named(tmp_path, vae_dir, capsys):
    latte = {"x_embedder.proj.weight": torch.zeros(8, 4, 2, 2), "t_embedder.mlp.0.weight": torch.zeros(8, 256),
             "blocks.0.attn.qkv.weight": torch.zeros(24, 8), "pos_embed": torch.zeros(1, 16, 8)}
    torch.save({"ema": latte}, tmp_path / "ffs.pt")
    assert _convert(tmp_path, vae_dir, tmp_path / "ffs.pt") == 2
    err = capsys.readouterr().err
    assert "official Latte checkpoint" in err and "latte-official" in err


@pytest.mark.parametrize("change, needles", [
    (dict(model_channels=64), ["model_channels=64 in the YAML, 32 in the weights"]),
    (dict(temporal_conv=False, fps_cond=False),
     ["temporal_conv=False in the YAML, True in the weights", "fps_cond=False in the YAML, True in the weights"]),
    (dict(attention_resolutions=[1]), ["attention_resolutions"]),
    (dict(num_head_channels=8), ["num_head_channels=8 in the YAML, 16 in the weights"]),
])
def test_a_yaml_that_disagrees_with_the_tensors_is_named(tmp_path, vae_dir, capsys, change, needles):
    (tmp_path / "vc.yaml").write_text(yaml.safe_dump(official_config_yaml({**VARIANTS["vc2"], **change})))
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path), "--config", str(tmp_path / "vc.yaml")) == 2
    err = capsys.readouterr().err
    assert "--config disagrees with the weights" in err and all(n in err for n in needles), err
    assert not (tmp_path / "out").exists()


def test_a_yaml_schedule_that_disagrees_with_the_betas_is_named(tmp_path, vae_dir, capsys):
    tree = official_config_yaml(VARIANTS["vc2"], use_scale=True)
    tree["model"]["params"]["linear_end"] = 0.02
    (tmp_path / "vc.yaml").write_text(yaml.safe_dump(tree))
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path), "--config", str(tmp_path / "vc.yaml")) == 2
    err = capsys.readouterr().err
    assert "linear_end=0.02" in err and "betas" in err


def _film(sd):  # FiLM ResBlocks (use_scale_shift_norm): emb_layers gives a scale and a shift
    k = "model.diffusion_model.middle_block.0.emb_layers.1"
    sd[f"{k}.weight"], sd[f"{k}.bias"] = torch.zeros(128, 128), torch.zeros(128)


def _image_model(sd):  # Stable Diffusion's layout: no temporal transformer after the spatial ones
    for k in [k for k in sd if k.startswith("model.diffusion_model.middle_block.2.")]:
        del sd[k]


def _spatial_aware(sd):  # tempspatial_aware: 3×3×3 temporal kernels
    k = "model.diffusion_model.middle_block.0.temopral_conv.conv1.2.weight"
    sd[k] = torch.zeros(64, 64, 3, 3, 3)


@pytest.mark.parametrize("edit, needle", [(_film, "use_scale_shift_norm=True"),
                                          (_image_model, "temporal_attention=False"),
                                          (_spatial_aware, "tempspatial_aware=True")])
def test_layouts_moviola_cannot_compute_are_refused_by_name(tmp_path, vae_dir, capsys, edit, needle):
    assert _convert(tmp_path, vae_dir, _tiny_ckpt(tmp_path, edit)) == 2
    assert needle in capsys.readouterr().err


def test_cross_attending_temporal_layers_with_relative_positions_are_refused():
    cfg = dict(VARIANTS["cross"], use_relative_position=True, use_causal_attention=False)
    unet_sd, _ = official_unet(cfg, device="meta")
    with pytest.raises(CheckpointError, match="relative positions over text tokens"):
        videocrafter_to_moviola(unet_sd, dict(cfg))
