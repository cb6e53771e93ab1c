"""Text- and image-conditioned training and sampling: caption dropout to the empty prompt, negative
prompts, guidance, context frames kept exactly, and the warm start that adds new inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import moviola
from moviola.cli import main
from moviola.conditioning import Conditioning
from moviola.conditioning.context import context_mask
from moviola.config import ConditionsConfig, ConfigError, LatteConfig, load_config
from moviola.diffusion import build_schedule, classifier_free_guidance
from moviola.models.latte import Latte
from moviola.training.trainer import Trainer, init_from_checkpoint


def tiny(bert_dir, *extra):
    return ["name=t2v", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
            "model.num_heads=2", "conditions.text_channels=24", f"text.encoder={bert_dir}", "text.max_length=10",
            "data.size=32", "data.frames=4", "data.count=8", "train.batch_size=4", "train.lr=1e-3",
            "train.device=cpu", "train.precision=fp32", "train.steps=4", "train.checkpoint_every=4",
            "sample.steps=4", *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert_dir):
    run = tmp_path_factory.mktemp("t2v") / "run"
    cfg = load_config(overrides=tiny(tiny_bert_dir, "model.text_pooled=true", "conditions.context_frames=true",
                                     "conditions.text_dropout=0.5", "conditions.context_dropout=0.5"))
    Trainer(cfg, run, quiet=True).train()
    return run


def test_caption_dropout_trains_on_the_empty_prompt(run):
    trainer = Trainer(moviola.config.config_from_json(run / "config.json"), run, resume=True, quiet=True)
    empty, empty_mask = trainer.text([""])
    seen_empty = seen_caption = 0
    for step in range(6):
        _, cond, _, _, _ = trainer.make_batch(step)
        for i in range(cond.text.shape[0]):
            if torch.equal(cond.text[i], empty[0]) and torch.equal(cond.text_mask[i], empty_mask[0]):
                seen_empty += 1
            else:
                assert int(cond.text_mask[i].sum()) > 2  # a real caption
                seen_caption += 1
    assert seen_empty > 0 and seen_caption > 0  # dropout 0.5 over 24 examples


def test_context_frames_in_training_are_the_clean_first_frame_or_dropped(run):
    trainer = Trainer(moviola.config.config_from_json(run / "config.json"), run, resume=True, quiet=True)
    x0, cond, _, _, _ = trainer.make_batch(0)
    m = cond.context_mask
    assert m.shape == (4, 1, 4, 1, 1)
    for i in range(4):
        given = m[i, 0, :, 0, 0].tolist()
        assert given in ([1, 0, 0, 0], [0, 0, 0, 0])
        torch.testing.assert_close(cond.context[i], x0[i] * m[i])


def test_context_masks_for_prediction_and_interpolation():
    g = torch.Generator().manual_seed(0)
    ends = context_mask("ends", 3, 6, g)[:, 0, :, 0, 0]
    assert ends.tolist() == [[1, 0, 0, 0, 0, 1]] * 3
    prefix = context_mask("prefix", 50, 8, g)[:, 0, :, 0, 0]
    k = prefix.sum(1)
    assert k.min() >= 1 and k.max() <= 4 and len(set(k.tolist())) > 1
    assert all(prefix[i, :int(k[i])].all() for i in range(50))  # given frames are a prefix
    mixed = context_mask("any", 60, 8, g)[:, 0, :, 0, 0]
    kinds = {("ends" if r[-1] and r.sum() == 2 else "first" if r.sum() == 1 else "prefix") for r in mixed}
    assert kinds == {"first", "prefix", "ends"}
    with pytest.raises(ValueError, match="context mode"):
        context_mask("middle", 1, 4)


def test_guidance_scale_one_equals_the_conditional_prediction(tiny_bert_dir, run):
    pipe = moviola.load_pipeline(run, device="cpu")
    emb, mask = pipe.text(["a red circle moving right"])
    null, null_mask = pipe.text([""])
    cond, uncond = Conditioning(text=emb, text_mask=mask), Conditioning(text=null, text_mask=null_mask)
    x, t = torch.randn(1, 3, 4, 32, 32), torch.tensor([500])
    with torch.no_grad():
        direct = pipe.model(x, t, cond)
        assert torch.equal(classifier_free_guidance(pipe.model, x, t, cond, uncond, 1.0), direct)
        g = classifier_free_guidance(pipe.model, x, t, cond, uncond, 3.0)
        ref = pipe.model(x, t, uncond) + 3.0 * (direct - pipe.model(x, t, uncond))
    torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)


def test_the_negative_prompt_replaces_the_empty_prompt_in_guidance(run):
    pipe = moviola.load_pipeline(run, device="cpu")
    _randomize_text_paths(pipe.model)
    base = pipe(prompt=["a red circle moving right"], steps=3, cfg=4.0, seed=0)
    neg = pipe(prompt=["a red circle moving right"], negative_prompt="a blue square", steps=3, cfg=4.0, seed=0)
    empty_neg = pipe(prompt=["a red circle moving right"], negative_prompt="", steps=3, cfg=4.0, seed=0)
    assert torch.equal(base, empty_neg)
    assert not torch.equal(base, neg)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        pipe(prompt=["a"], negative_prompt=["b", "c"], steps=2)


def _randomize_text_paths(model):
    """A trained-for-4-steps model barely listens to text; make its text paths matter for the test."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "cross_attn.proj" in name or "text_pooler.fc2" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_pooled_text_ignores_padding_and_follows_the_prompt():
    model = Latte(LatteConfig(patch_size=8, hidden_size=32, depth=2, num_heads=2, text_pooled=True),
                  ConditionsConfig(text_channels=8), in_channels=3).eval()
    _randomize_text_paths(model)
    with torch.no_grad():
        model.final_layer.linear.weight.normal_(0, 0.1)  # adaLN-Zero would make every output 0
    x, t = torch.randn(1, 3, 2, 16, 16), torch.tensor([10])
    text = torch.randn(1, 5, 8)
    mask = torch.tensor([[True, True, True, False, False]])
    noisy_pad = text.clone()
    noisy_pad[:, 3:] = 100.0
    with torch.no_grad():
        a = model(x, t, Conditioning(text=text, text_mask=mask))
        b = model(x, t, Conditioning(text=noisy_pad, text_mask=mask))
        c = model(x, t, Conditioning(text=torch.randn(1, 5, 8), text_mask=mask))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_image_to_video_keeps_the_given_frame_exactly_in_pixel_space(run, tmp_path):
    pipe = moviola.load_pipeline(run, device="cpu")
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "first.png")
    out = pipe(prompt=["a red circle moving right", "a blue square moving up"], image=str(tmp_path / "first.png"),
               steps=3, seed=0)
    expected = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    for v in out:
        torch.testing.assert_close(v[:, 0], expected, atol=1e-6, rtol=0)
        assert not torch.allclose(v[:, 1], expected, atol=1e-2)  # the rest is generated


def test_an_image_of_another_size_is_resized_to_cover_then_centre_cropped(run, tmp_path):
    from moviola.data.transforms import resize_and_crop

    pipe = moviola.load_pipeline(run, device="cpu")
    img = (np.random.default_rng(1).random((48, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "wide.png")
    frame = pipe.prepare_image(str(tmp_path / "wide.png"), 32, 32)
    full = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(frame, resize_and_crop(full[:, None], (32, 32))[:, 0])
    out = pipe(prompt=["a"], image=str(tmp_path / "wide.png"), steps=2)
    torch.testing.assert_close(out[0, :, 0], frame.clamp(-1, 1), atol=1e-6, rtol=0)


def test_image_to_video_through_a_frame_vae_keeps_the_frame_within_autoencoder_error(tiny_bert_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae_dir = tmp_path / "vae"
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  sample_size=32).save_pretrained(str(vae_dir))
    cfg = load_config(overrides=tiny(tiny_bert_dir, "conditions.context_frames=true", "autoencoder.kind=frame_vae",
                                     f"autoencoder.path={vae_dir}", "model.patch_size=4"))
    pipe = moviola.pipelines.Pipeline(moviola.models.registry.build_model(cfg.model, cfg.conditions, 4),
                                      moviola.autoencoders.build_autoencoder(cfg.autoencoder),
                                      build_schedule(cfg.diffusion), cfg, device="cpu")
    frame = torch.rand(3, 32, 32) * 2 - 1
    out = pipe(prompt=["a red circle"], image=frame, steps=2)
    with torch.no_grad():
        recon = pipe.autoencoder.decode(pipe.autoencoder.encode(frame[None, :, None]))[0, :, 0].clamp(-1, 1)
    torch.testing.assert_close(out[0, :, 0], recon, atol=1e-5, rtol=0)


def test_bad_pipeline_inputs(run, tmp_path):
    pipe = moviola.load_pipeline(run, device="cpu")
    with pytest.raises(ValueError, match="prompt list is empty"):
        pipe(prompt=[])
    with pytest.raises(ValueError, match="text-to-video model: pass a prompt"):
        pipe(num_videos=1)
    with pytest.raises(ValueError, match="not class-conditional"):
        pipe(labels=[1])
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read .*bad.png"):
        pipe(prompt=["a"], image=str(tmp_path / "bad.png"))
    with pytest.raises(FileNotFoundError):
        pipe(prompt=["a"], image=str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="2 images for 3 videos"):
        pipe(prompt=["a", "b", "c"], image=[torch.zeros(3, 32, 32)] * 2)


def test_a_model_without_context_refuses_an_image(tiny_bert_dir, tmp_path):
    run = tmp_path / "plain"
    Trainer(load_config(overrides=tiny(tiny_bert_dir, "train.steps=1", "train.checkpoint_every=1")), run,
            quiet=True).train()
    pipe = moviola.load_pipeline(run, device="cpu")
    with pytest.raises(ValueError, match="does not take a first frame"):
        pipe(prompt=["a"], image=torch.zeros(3, 32, 32))


def test_widened_warm_start_leaves_the_old_model_unchanged_for_any_context(tmp_path, tiny_bert_dir):
    """--init-from a model without context frames: the new input channels start at zero."""
    old_run = tmp_path / "old"
    Trainer(load_config(overrides=tiny(tiny_bert_dir, "train.steps=2", "train.checkpoint_every=2")), old_run,
            quiet=True).train()
    old = moviola.load_model(old_run)
    new_cfg = load_config(overrides=tiny(tiny_bert_dir, "conditions.context_frames=true"))
    new = moviola.models.registry.build_model(new_cfg.model, new_cfg.conditions, 3)
    lines = init_from_checkpoint(new, str(old_run))
    assert "init-from: input channels by group: kept ['x_t'], new at zero ['context']" in lines
    new.eval()
    x, t = torch.randn(2, 3, 4, 32, 32), torch.tensor([100, 700])
    text = Conditioning(text=torch.randn(2, 10, 24), text_mask=torch.ones(2, 10, dtype=torch.bool))
    ctx = Conditioning(text=text.text, text_mask=text.text_mask, context=torch.randn(2, 3, 4, 32, 32),
                       context_mask=torch.ones(2, 1, 4, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(new(x, t, ctx), old(x, t, text))


def test_the_encoder_width_must_match_caption_channels(tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="conditions.text_channels=24"):  # the width to set
        Trainer(load_config(overrides=tiny(tiny_bert_dir, "conditions.text_channels=16")), tmp_path / "r",
                quiet=True)


def test_cli_prompts(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving right\n\n  a blue square moving up  \n")
    assert main(["sample", str(run), "--prompts-file", str(prompts), "--prompt", "a green triangle moving left",
                 "--num-videos", "2", "--steps", "2", "--out-dir", str(tmp_path / "out"), "--quiet"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a green triangle moving left"] * 2 + ["a red circle moving right"] * 2 + \
        ["a blue square moving up"] * 2
    assert [r["seed"] for r in rows] == list(range(6))
    assert rows[0]["colour"] == "green" and rows[5]["direction"] == "up"
    (tmp_path / "empty.txt").write_text("\n\n")
    capsys.readouterr()
    assert main(["sample", str(run), "--prompts-file", str(tmp_path / "empty.txt"), "--out", "x.gif"]) == 2
    assert "prompts-file is empty" in capsys.readouterr().err
    assert main(["sample", str(run), "--out", str(tmp_path / "x.gif")]) == 2
    assert "--prompt TEXT" in capsys.readouterr().err
    assert main(["sample", str(run), "--label", "3", "--prompt", "a", "--out", "x.gif"]) == 2
    assert "not both" in capsys.readouterr().err


def test_eval_shapes_samples_a_text_model_from_captions_and_scores_image_to_video(run):
    from moviola.eval.shapes_eval import evaluate_checkpoint, psnr

    result = evaluate_checkpoint(run, per_class=1, steps=2, image_to_video=True)
    assert result["settings"]["conditioning"] == "text"
    assert result["all"]["n"] == 48 and result["holdout"]["n"] == 8
    i2v = result["image_to_video"]
    assert i2v["n"] == 48 and i2v["first_frame_psnr_min"] == 100.0  # identity autoencoder: kept exactly
    assert 0.0 <= i2v["colour_and_shape_kept"] <= 1.0
    a = torch.zeros(3, 4, 4)
    assert psnr(a, a + 0.2) == pytest.approx(10 * np.log10(1 / 0.01))  # 0.2 on [-1, 1] = 0.1 on [0, 1]


def test_with_a_prompt_the_unconditional_branch_keeps_the_given_frame(run):
    pipe = moviola.load_pipeline(run, device="cpu")
    seen = []
    model = pipe.model

    class Recorder(torch.nn.Module):
        accepts, learned_sigma = model.accepts, False

        def forward(self, x, t, cond):
            seen.append(cond)
            return model(x, t, cond)

    pipe.model = Recorder()
    pipe(prompt=["a red circle moving right"], image=torch.zeros(3, 32, 32), steps=1, cfg=3.0)
    both = seen[0]  # the doubled batch: conditional half, unconditional half
    assert both.context_mask.shape[0] == 2 and torch.equal(both.context_mask[0], both.context_mask[1])
    assert both.context_mask[1, 0, 0].item() == 1  # the frame is still given in the unconditional half
    empty, _ = pipe.text([""])
    assert torch.equal(both.text[1], empty[0])  # ...whose prompt is the empty one


def test_image_tensors_must_be_in_minus_one_to_one(run):
    pipe = moviola.load_pipeline(run, device="cpu")
    with pytest.raises(ValueError, match=r"float in \[-1, 1\]"):
        pipe(prompt=["a"], image=torch.full((3, 32, 32), 255, dtype=torch.uint8), steps=1)
    with pytest.raises(ValueError, match=r"float in \[-1, 1\]"):
        pipe(prompt=["a"], image=torch.full((3, 32, 32), 3.0), steps=1)


def test_a_prompt_for_a_class_model_says_it_takes_labels(tmp_path, capsys):
    run = tmp_path / "cls"
    Trainer(load_config(overrides=["name=c", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32",
                                   "model.depth=2", "model.num_heads=2", "conditions.num_classes=48", "data.frames=4",
                                   "data.count=4", "train.batch_size=2", "train.device=cpu", "train.precision=fp32",
                                   "train.steps=1", "train.checkpoint_every=1"]), run, quiet=True).train()
    assert main(["sample", str(run), "--prompt", "a red circle", "--out", str(tmp_path / "x.gif")]) == 2
    assert "does not take text" in capsys.readouterr().err
