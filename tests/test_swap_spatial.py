"""``moviola convert swap-spatial VIDEO IMAGE OUT`` (Video LDM's DreamBooth transfer): OUT holds IMAGE's
spatial weights and VIDEO's temporal weights bit for bit, every tensor accounted for; with α = 1 it is the
IMAGE model; with the learned α it is neither model; what does not fit is refused by name before anything is
written; the CLI prints the counts."""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from moviola import Conditioning
from moviola.config import load_config, to_dict
from moviola.interop import swap_spatial, write_checkpoint_dir
from moviola.io.checkpoint import CheckpointError, save_checkpoint
from moviola.models.loading import load_model
from moviola.models.registry import build_model

torch.set_num_threads(1)
B, C, T, H = 2, 3, 4, 8  # pixel space (identity autoencoder): 3 channels
TEXT = 6
BASE = ["model.family=video_ldm", "model.block_out_channels=[16,32]", "model.layers_per_block=1", "model.num_heads=2",
        "model.norm_num_groups=8", "model.temporal_head_channels=8", "data.size=8", "data.frames=4",
        f"conditions.text_channels={TEXT}"]
LATTE = ["model.size=tiny", "model.patch_size=2", "model.hidden_size=32", "model.depth=2", "model.num_heads=2",
         "data.size=8", "data.frames=4", f"conditions.text_channels={TEXT}"]


def tiny(*overrides: str, seed: int = 0, base=BASE):
    """(config, model) with every weight moved off its initialization (zero-initialized layers would make
    comparisons trivially equal)."""
    cfg = load_config(overrides=[*base, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.conditions, C)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return cfg, model.eval()


def save_run(run, cfg, model, seed: int):
    """A training checkpoint whose EMA weights differ from its model weights."""
    ema = build_model(cfg.model, cfg.conditions, C)
    ema.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # the raw weights: the EMA weights moved a little
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    save_checkpoint(run / "checkpoints", 3, to_dict(cfg), model, ema)
    return ema.eval()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """VIDEO (a run, EMA ≠ raw weights), IMAGE (an exported image model) and IMAGE2 (another video model, with
    other temporal layers and a context pyramid: all of them ignored)."""
    root = tmp_path_factory.mktemp("sources")
    cfg, model = tiny(seed=0)
    video_ema = save_run(root / "video", cfg, model, seed=1)
    image_cfg, image = tiny("model.temporal_layers=none", seed=2)
    write_checkpoint_dir(root / "image", image_cfg, image.state_dict())
    cfg2, model2 = tiny("model.temporal_layers=attention", "conditions.context_frames=true", seed=3)
    write_checkpoint_dir(root / "image2", cfg2, model2.state_dict())
    return {"video": root / "video", "video_ema": video_ema, "video_model": model,
            "image": root / "image", "image_model": image, "image2": root / "image2", "image2_model": model2}


def temporal_names(model) -> set[str]:
    ids = {id(p) for p in model.parameter_groups("temporal")}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def inputs(seed=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, H, H, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return x, torch.tensor([30, 600]), Conditioning(text=torch.randn(B, 5, TEXT, generator=g), text_mask=mask)


# ---------------------------------------------------------------------------------------- the swap
@pytest.mark.parametrize("which", ["image", "image2"], ids=["image-model", "another-video-model"])
def test_out_holds_image_spatial_and_video_temporal_weights_bitwise(sources, tmp_path, which):
    out = swap_spatial(sources["video"], sources[which], tmp_path / "out")
    got = load_file(str(out / "model.safetensors"))
    video, image = sources["video_ema"].state_dict(), sources[f"{which}_model"].state_dict()
    temporal = temporal_names(sources["video_ema"])
    assert set(video) == {n for n, _ in sources["video_ema"].named_parameters()}  # no buffers: every tensor below
    assert set(got) == set(video) and 0 < len(temporal) < len(got)
    for k, v in got.items():
        want = video[k] if k in temporal else image[k]
        assert v.dtype == want.dtype and torch.equal(v, want), k
    image_temporal = temporal_names(sources[f"{which}_model"])
    assert set(image) - image_temporal == set(got) - temporal  # every spatial tensor of IMAGE, nothing else
    assert not any(torch.equal(got[k], video[k]) for k in set(got) - temporal)  # really swapped
    record = json.loads((out / "export.json").read_text())
    assert record == {"source_video": str(sources["video"] / "checkpoints" / "step_00000003"),
                      "source_image": str(sources[which]), "weights": "ema", "video_weights": "ema",
                      "image_weights": "model", "swapped_spatial_tensors": len(got) - len(temporal),
                      "kept_temporal_tensors": len(temporal)}
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (sources["video"] / "checkpoints" / "step_00000003" / "config.json").read_text())  # VIDEO's config
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.safetensors"]


def test_weights_model_takes_the_raw_temporal_weights(sources, tmp_path):
    out = swap_spatial(sources["video"], sources["image"], tmp_path / "out", weights="model")
    got = load_file(str(out / "model.safetensors"))
    raw, ema = sources["video_model"].state_dict(), sources["video_ema"].state_dict()
    for k in temporal_names(sources["video_ema"]):
        assert torch.equal(got[k], raw[k]) and not torch.equal(got[k], ema[k]), k
    assert json.loads((out / "export.json").read_text())["video_weights"] == "model"


def test_alpha_one_gives_the_image_model_and_the_learned_alpha_does_not(sources, tmp_path):
    model = load_model(swap_spatial(sources["video"], sources["image"], tmp_path / "out"))
    image, video = load_model(sources["image"]), load_model(sources["video"])
    x, t, cond = inputs()
    with torch.no_grad():
        swapped, image_out, video_out = model(x, t, cond), image(x, t, cond), video(x, t, cond)
        assert (swapped - video_out).abs().max() > 1e-3  # IMAGE's spatial layers are in use
        assert (swapped - image_out).abs().max() > 1e-3  # and VIDEO's temporal layers
        mixes = [m for n, m in model.named_modules() if n.endswith(".mix")]
        assert len(mixes) == 8 + 7
        for m in mixes:
            m.mix_logit.fill_(float("inf"))  # α = 1
        torch.testing.assert_close(model(x, t, cond), image_out, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- refusals
def _latte(path):
    cfg, model = tiny(seed=4, base=LATTE)
    write_checkpoint_dir(path, cfg, model.state_dict())


def _image(*overrides):
    def make(path):
        cfg, model = tiny("model.temporal_layers=none", *overrides, seed=6)
        write_checkpoint_dir(path, cfg, model.state_dict())
    return make


REFUSED = {
    "latte-image": (_latte, r"^IMAGE \S+ is a latte checkpoint: swapping spatial layers takes two video_ldm"),
    "other-channels": (_image("model.block_out_channels=[32,64]"),
                       r"^spatial tensor unet\.conv_in\.weight has shape \(32, 3, 3, 3\) in IMAGE, \(16, 3, 3, 3\) in "
                       r"VIDEO: not the same spatial architecture$"),
    "other-levels": (_image("model.block_out_channels=[16,32,32]"), r"unet\.\S+ .*not the same spatial architecture"),
    "more-transformer-layers": (_image("model.transformer_layers=2"),
                                r"^IMAGE \S+ has spatial tensors VIDEO lacks \(\d+, first unet\.\S+transformer_blocks\.1"),
    "other-text-width": (_image("conditions.text_channels=8"),
                         r"^conditions\.text_channels \(the text width\) differs: VIDEO has 6, IMAGE has 8"),
    "classes": (_image("conditions.num_classes=5"),
                r"^conditions\.num_classes \(the class count\) differs: VIDEO has 0, IMAGE has 5"),
    "v-prediction": (_image("diffusion.prediction=v"), r"^diffusion\.prediction .*differs"),
    "other-heads": (_image("model.num_heads=1"), r"^the U-Net's heads per level .*differs: VIDEO has \(2, 2\), "
                                                  r"IMAGE has \(1, 1\)"),  # the same shapes, another function
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_what_does_not_fit_is_refused_by_name_before_writing(sources, tmp_path, case):
    make, pattern = REFUSED[case]
    make(tmp_path / "image")
    with pytest.raises(CheckpointError) as e:
        swap_spatial(sources["video"], tmp_path / "image", tmp_path / "out")
    message = str(e.value)
    assert "\n" not in message and re.search(pattern, message), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image"]  # no OUT, no temporary directory


def test_a_latte_video_or_an_image_model_first_is_refused(sources, tmp_path):
    _latte(tmp_path / "latte")
    with pytest.raises(CheckpointError, match=r"^VIDEO \S+ is a latte checkpoint"):
        swap_spatial(tmp_path / "latte", sources["image"], tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"^VIDEO \S+ has no temporal layers .*: give the video model first"):
        swap_spatial(sources["image"], sources["video"], tmp_path / "out")  # the arguments swapped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latte"]


def test_an_existing_out_is_refused_and_left_alone(sources, tmp_path, capsys):
    from moviola.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="already exists"):
        swap_spatial(sources["video"], sources["image"], out)
    assert main(["convert", "swap-spatial", str(sources["video"]), str(sources["image"]), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------------------- CLI
def test_the_cli_swaps_and_prints_the_counts(sources, tmp_path, capsys):
    from moviola.cli import main

    out = tmp_path / "out"
    assert main(["convert", "swap-spatial", str(sources["video"]), str(sources["image"]), str(out)]) == 0
    printed = capsys.readouterr().out
    temporal = len(temporal_names(sources["video_ema"]))
    spatial = len(sources["video_ema"].state_dict()) - temporal
    assert f"swapped {spatial} spatial tensors from {sources['image']}; kept {temporal} temporal tensors of " \
           f"{sources['video']}" in printed
    assert f"wrote {out}" in printed
    assert load_model(out).config.temporal_layers == "conv_attention"
