"""nn/unet.py: the Stable Diffusion U-Net against diffusers' UNet2DConditionModel (loaded from its saved
files with our own code), its refusals, the temporal hook, the added embedding, and that it trains."""
from __future__ import annotations

import copy
import inspect
import json
import re

import pytest
import torch
from torch import nn

from moviola.nn import unet as unet_mod
from moviola.nn.unet import BLOCKS, UNet2D, make_block

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file  # noqa: E402  (after the skip)

TINY = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24, attention_head_dim=8, norm_num_groups=8)
THREE = dict(TINY, block_out_channels=(16, 32, 32), layers_per_block=1, attention_head_dim=2)
VARIANTS = {
    "sd1_conv_projection": {},
    "sd2_linear_projection_heads_per_level": dict(use_linear_projection=True, attention_head_dim=(2, 4)),
    "three_levels_downblock_last": dict(THREE, down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2),
    "three_levels_downblock_first": dict(THREE, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                                         up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",)),
    "two_transformer_layers": dict(layers_per_block=1, transformer_layers_per_block=2),
    "no_mid_block": dict(mid_block_type=None),
    "resnet_mid_block": dict(mid_block_type="UNetMidBlock2D"),
    "layers_per_level_pad0": dict(layers_per_block=(1, 2), downsample_padding=0),
    "time_proj_sin_first_mish": dict(flip_sin_to_cos=False, freq_shift=1, act_fn="mish"),
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (diffusers zero-inits none here, but its biases start at 0 and norms at 1):
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1²), norm scales 1 + N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(r / p[0].numel() ** 0.5)
            elif "norm" in name.split(".")[-2] and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)
    return model


def diffusers_pair(tmp_path, **overrides):
    """A random diffusers U-Net, saved; ours built from its config.json and loaded from its safetensors."""
    ref = randomize(diffusers.UNet2DConditionModel(**dict(TINY, **overrides))).eval()
    ref.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    ours = UNet2D.from_diffusers_config(config).eval()
    ours.load_state_dict(load_file(str(tmp_path / "diffusion_pytorch_model.safetensors")), strict=True)
    return ref, ours


def tiny_unet(**kw) -> UNet2D:
    args = {k: v for k, v in TINY.items() if k != "sample_size"}
    args.update(layers_per_block=1)
    args.update(kw)
    return UNet2D(**args)


# ---------------------------------------------------------------- parity with diffusers
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_diffusers(tmp_path, variant):
    ref, ours = diffusers_pair(tmp_path, **VARIANTS[variant])
    g = torch.Generator().manual_seed(1)
    text = torch.randn(3, 6, 24, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    cases = [  # (x, t, text mask): batch of 3 with different int timesteps; float and int scalars; odd sizes
        (torch.randn(3, 4, 8, 8, generator=g), torch.tensor([3, 480, 999]), mask),
        (torch.randn(3, 4, 10, 14, generator=g), 421.7, mask),
        (torch.randn(3, 4, 9, 6, generator=g), 250, None),
        (torch.randn(3, 4, 8, 8, generator=g), torch.tensor([0.5, 17.25, 900.0]), None),
    ]
    with torch.no_grad():
        for x, t, m in cases:
            expected = ref(x, t, text, encoder_attention_mask=m).sample
            got = ours(x, t, text, m)
            assert got.shape == x.shape
            assert (got - expected).abs().max() < 1e-4, (variant, tuple(x.shape), t)


def test_text_mask_matters_and_matches(tmp_path):
    ref, ours = diffusers_pair(tmp_path)
    g = torch.Generator().manual_seed(2)
    x, text = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 5, 24, generator=g)
    # the last row has no real token: diffusers' -10000 bias then attends to all of them alike
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        masked, unmasked = ours(x, 10, text, mask), ours(x, 10, text)
        expected = ref(x, 10, text, encoder_attention_mask=mask).sample
    assert (masked[:2] - expected[:2]).abs().max() < 1e-4
    # diffusers adds -10000 to every logit of the empty row, rounding them to float32's ~1e-3 spacing there
    assert (masked[2] - expected[2]).abs().max() < 2e-3
    assert (masked[:2] - unmasked[:2]).abs().max() > 1e-3  # the masked tokens were really heard without it
    assert torch.equal(masked[2], unmasked[2])
    # masked tokens get no attention: changing them changes nothing
    mask, x, text, masked = mask[:2], x[:2], text[:2], masked[:2]
    other = text.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 24, generator=g)
    with torch.no_grad():
        assert (ours(x, 10, other, mask) - masked).abs().max() < 1e-5


def test_state_dict_keys_equal_diffusers():
    ref = diffusers.UNet2DConditionModel(**TINY)
    ours = UNet2D.from_diffusers_config(dict(ref.config))
    theirs = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == theirs


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize("key,value", [("class_embed_type", "timestep"), ("addition_embed_type", "text_time"),
                                       ("resnet_time_scale_shift", "scale_shift"), ("conv_in_kernel", 7),
                                       ("only_cross_attention", True), ("time_cond_proj_dim", 256),
                                       ("reverse_transformer_layers_per_block", [[1, 1], [1, 1]]),
                                       ("some_future_key", 3)])
def test_unsupported_diffusers_key_is_named(key, value):
    config = dict(diffusers.UNet2DConditionModel(**TINY).config)
    config[key] = value
    with pytest.raises(ValueError, match=key):
        UNet2D.from_diffusers_config(config)


def test_harmless_diffusers_keys_are_accepted():
    config = dict(diffusers.UNet2DConditionModel(**TINY).config)
    config.update(_class_name="UNet2DConditionModel", _diffusers_version="0.42.1", sample_size=64,
                  upcast_attention=True, only_cross_attention=[False, False], mid_block_only_cross_attention=False)
    UNet2D.from_diffusers_config(config)


def test_every_diffusers_argument_is_handled():
    """Each UNet2DConditionModel argument of the installed diffusers is mapped, ignored or refused unless
    default, and the refused ones' defaults are diffusers'."""
    params = inspect.signature(diffusers.UNet2DConditionModel.__init__).parameters
    handled = set(unet_mod._MAPPED) | set(unet_mod._IGNORED) | set(unet_mod._ONLY_DEFAULT)
    assert set(params) - {"self"} == handled
    for key, default in unet_mod._ONLY_DEFAULT.items():
        assert params[key].default == default, key


def test_block_types_length_mismatch():
    with pytest.raises(ValueError, match="up_block_types"):
        tiny_unet(up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
    with pytest.raises(ValueError, match="down_block_types"):
        tiny_unet(down_block_types=("DownBlock2D",))


def test_channels_not_divisible_by_groups_names_both():
    with pytest.raises(ValueError, match=r"(?=.*\b30\b)(?=.*\b8\b).*norm_num_groups"):
        tiny_unet(block_out_channels=(30, 64))


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="attention_head_dim"):
        tiny_unet(attention_head_dim=3)
    with pytest.raises(ValueError, match="num_attention_heads"):
        tiny_unet(num_attention_heads=(4, 3), attention_head_dim=8)
    tiny_unet(attention_head_dim=(4, 3), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), mid_block_type=None)  # level 1 never attends


def test_unknown_block_type_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match=r"FancyDownBlock.*CrossAttnDownBlock2D"):
        tiny_unet(down_block_types=("FancyDownBlock", "DownBlock2D"))
    with pytest.raises(ValueError, match=r"Nope.*UpBlock2D"):
        make_block("Nope", channels=32)
    with pytest.raises(ValueError, match="up_block_types"):
        tiny_unet(up_block_types=("DownBlock2D", "CrossAttnUpBlock2D"))  # a down block on the up path
    assert {"CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "CrossAttnUpBlock2D",
            "UpBlock2D"} <= set(BLOCKS)


def test_input_errors():
    model = tiny_unet()
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="context"):
        model(x, 1)
    with pytest.raises(ValueError, match="t must"):
        model(x, torch.tensor([1, 2, 3]), torch.randn(2, 3, 24))
    with pytest.raises(ValueError, match="emb"):
        model(x, 1, torch.randn(2, 3, 24), emb=torch.randn(2, 7))


def test_no_cross_attention():
    model = tiny_unet(cross_attention_dim=None).eval()
    assert not any("attn2" in k or ("norm2" in k and "transformer_blocks" in k) for k in model.state_dict())
    assert model(torch.randn(2, 4, 8, 8), 5).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="cross_attention_dim=None"):
        model(torch.randn(2, 4, 8, 8), 5, torch.randn(2, 3, 24))


# ---------------------------------------------------------------- the temporal hook
class Recorder(nn.Module):
    def __init__(self, path, channels, log):
        super().__init__()
        self.path, self.channels, self.log = path, channels, log

    def forward(self, h, video):
        assert h.shape[1] == self.channels
        self.log.append((self.path, video))
        return h


class AddConstant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, h, video):
        return h + self.value


def test_factory_returning_none_adds_no_keys():
    calls = []
    ref = diffusers.UNet2DConditionModel(**TINY)
    ours = UNet2D.from_diffusers_config(dict(ref.config), temporal=lambda *a: calls.append(a))
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert ours.transformer_in is None
    with torch.no_grad():
        assert ours(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 2, 24)).shape == (1, 4, 8, 8)
    assert [kind for kind, _, _ in calls] == (["input"] + ["resnet", "attention"] * 2 + ["resnet"] * 2
                                              + ["resnet", "attention", "resnet"] + ["resnet"] * 3
                                              + ["resnet", "attention"] * 3)


def test_hook_order_paths_channels_and_video():
    log, built = [], []

    def factory(kind, channels, path):
        built.append((kind, channels, path))
        return Recorder(path, channels, log)

    model = tiny_unet(temporal=factory).eval()
    for name, module in model.named_modules():  # the spatial layers log themselves too
        if re.search(r"(resnets|attentions)\.\d+$", name) and "temp_" not in name:
            module.register_forward_hook(lambda m, i, o, name=name: log.append((name, None)))
    video = object()
    with torch.no_grad():
        model(torch.randn(2, 4, 8, 8), 3, torch.randn(2, 3, 24), video=video)
    expected = ["transformer_in",
                "down_blocks.0.resnets.0", "down_blocks.0.temp_convs.0",
                "down_blocks.0.attentions.0", "down_blocks.0.temp_attentions.0",
                "down_blocks.1.resnets.0", "down_blocks.1.temp_convs.0",
                "mid_block.resnets.0", "mid_block.temp_convs.0", "mid_block.attentions.0",
                "mid_block.temp_attentions.0", "mid_block.resnets.1", "mid_block.temp_convs.1",
                "up_blocks.0.resnets.0", "up_blocks.0.temp_convs.0", "up_blocks.0.resnets.1",
                "up_blocks.0.temp_convs.1",
                "up_blocks.1.resnets.0", "up_blocks.1.temp_convs.0", "up_blocks.1.attentions.0",
                "up_blocks.1.temp_attentions.0", "up_blocks.1.resnets.1", "up_blocks.1.temp_convs.1",
                "up_blocks.1.attentions.1", "up_blocks.1.temp_attentions.1"]
    assert [name for name, _ in log] == expected
    assert all(v is video for name, v in log if "temp_" in name or name == "transformer_in")
    temporal = [p for p in expected if "temp_" in p or p == "transformer_in"]
    assert [p for _, _, p in built] == temporal  # built in forward order, stored under its path
    modules = dict(model.named_modules())
    for kind, channels, path in built:
        assert modules[path].path == path
        assert channels == (64 if path.startswith(("down_blocks.1", "mid_block", "up_blocks.0")) else 32)
        slot = path.split(".")[-2] if "." in path else path
        assert kind == {"temp_convs": "resnet", "temp_attentions": "attention", "transformer_in": "input"}[slot]


def test_hook_modules_run_identity_is_exact_constant_changes():
    plain = tiny_unet().eval()
    x, text = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 24)
    with torch.no_grad():
        base = plain(x, 7, text)
        for module, same in ((lambda k, c, p: AddConstant(0.0), True), (lambda k, c, p: AddConstant(0.1), False)):
            hooked = tiny_unet(temporal=module).eval()
            hooked.load_state_dict(plain.state_dict(), strict=True)
            out = hooked(x, 7, text)
            assert torch.equal(out, base) if same else (out - base).abs().max() > 1e-3


def test_partial_factory_stores_only_its_modules():
    def factory(kind, channels, path):
        return nn.Conv2d(channels, channels, 1) if kind == "attention" else None

    plain, hooked = tiny_unet(), tiny_unet(temporal=factory)
    extra = set(hooked.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(hooked.state_dict())
    assert extra and all(".temp_attentions." in k for k in extra)
    assert hooked.transformer_in is None


# ---------------------------------------------------------------- the added embedding
def test_emb_is_added_to_the_time_embedding():
    model = randomize(tiny_unet()).eval()
    g = torch.Generator().manual_seed(3)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 3, 24, generator=g)
    e = torch.randn(2, model.time_embed_dim, generator=g)
    assert model.time_embed_dim == 4 * 32
    with torch.no_grad():
        out = model(x, torch.tensor([5, 600]), text, emb=e)
        plain = model(x, torch.tensor([5, 600]), text)
        for i in range(2):  # a model whose time embedding comes out shifted by e[i]
            shifted = copy.deepcopy(model)
            shifted.time_embedding.linear_2.bias += e[i]
            expected = shifted(x[i:i + 1], torch.tensor([5, 600])[i:i + 1], text[i:i + 1])
            assert (out[i:i + 1] - expected).abs().max() < 1e-5
    assert (out - plain).abs().max() > 1e-3


# ---------------------------------------------------------------- training
def test_it_trains():
    torch.manual_seed(0)
    model = tiny_unet()
    g = torch.Generator().manual_seed(4)
    x, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 3, 24, generator=g)
    t, target = torch.tensor([10, 200, 500, 900]), torch.randn(4, 4, 8, 8, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(model(x, t, text), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
