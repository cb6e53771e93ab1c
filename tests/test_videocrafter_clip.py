"""VideoCrafter's image-to-video through a frozen CLIP image encoder, end to end (``model.image_encoder: tokens``,
``conditions.image``, ``image.encoder``): the tokens training feeds are the encoder's tokens of each clip's frame 0,
zeros where ``conditions.image_dropout`` drops them (drawn after every other draw: other runs keep their batches);
the latent cache keeps them under a key that changes only with tokens on; a tiny model trains its image branch;
``pipe(image=...)`` gives the model the encoder's tokens of that image and the null branch zeros; ``moviola sample
--image`` and ``moviola eval shapes --image-to-video`` run; the config's and the pipeline's refusals are one line,
before any compute. A tiny random CLIPVisionModel, saved locally, stands in for CLIP."""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import pytest
import torch

import moviola
from moviola.autoencoders import build_autoencoder
from moviola.cli import main
from moviola.conditioning.image import CLIPImageEncoder
from moviola.config import ConfigError, build_config, config_from_json, load_config, to_dict
from moviola.data import build_dataset
from moviola.data.latent_cache import LatentCache, autoencoder_fingerprint, dataset_fingerprint
from moviola.diffusion import build_schedule
from moviola.models.registry import build_model
from moviola.pipelines import Pipeline
from moviola.training.trainer import Trainer

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

IMG = 16  # the CLIP stand-in's width = model.image_token_dim
TOKENS = 1 + (32 // 8) ** 2  # its tokens per image: the class token and 4×4 patches of 8 pixels
S, T, B = 32, 4, 2  # frame size (pixels = latent pixels with the identity autoencoder), frames, batch
PROMPT = "a red circle moving right"


def save_clip(path, width: int = IMG, seed: int = 0):
    """A random CLIPVisionModel of ``width`` on 32×32 images (patch 8), with its image processor, saved to ``path``."""
    torch.manual_seed(seed)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8)).eval()
    model.save_pretrained(path)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # "requires torchvision, falling back to the PIL backend"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    transformers.utils.logging.set_verbosity(verbosity)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_clip(tmp_path_factory.mktemp("clip") / "vision")


@pytest.fixture(scope="module")
def encoder(clip_dir):
    """The encoder loaded on its own: the reference the tests compute tokens with."""
    return CLIPImageEncoder(clip_dir)


def overrides(bert, clip, *extra: str) -> list[str]:
    """A tiny hybrid VideoCrafter (text, frame 0 concatenated and as CLIP tokens) on Moving Shapes."""
    return ["name=clip", "model.family=videocrafter", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
            "model.num_heads=2", "model.norm_num_groups=8", "model.image_encoder=tokens", f"model.image_token_dim={IMG}",
            "model.resampler_queries=4", "model.resampler_depth=1", "model.resampler_heads=2",
            "model.resampler_head_channels=8", "conditions.text_channels=24", f"text.encoder={bert}",
            "text.max_length=10", "conditions.context_frames=true", "conditions.image=true",
            *([f"image.encoder={clip}"] if clip is not None else []), "autoencoder.kind=identity", f"data.size={S}",
            f"data.frames={T}", "data.count=8", f"train.batch_size={B}", "train.steps=2",
            "train.checkpoint_every=1000", "train.device=cpu", "train.precision=fp32", "sample.steps=2", *extra]


@pytest.fixture()
def make(tiny_bert_dir, clip_dir, tmp_path):
    """``make(*overrides, name=...)``: a Trainer of the tiny model in ``tmp_path / name``."""
    def build(*extra: str, name: str = "run") -> Trainer:
        return Trainer(load_config(overrides=overrides(tiny_bert_dir, clip_dir, *extra)), tmp_path / name, quiet=True)
    return build


def replayed_image_kept(tr: Trainer, step: int, x0_shape, dropout: float) -> torch.Tensor:
    """The step's generator replayed in the documented order: timesteps, noise, label dropout, caption dropout,
    the context mask's two draws and context dropout, then the image dropout last."""
    g = torch.Generator().manual_seed(tr.cfg.train.seed * 1_000_003 + step)
    n = x0_shape[0]
    torch.randint(0, tr.cfg.diffusion.num_timesteps, (n,), generator=g)
    torch.randn(x0_shape, generator=g)
    torch.rand(n, generator=g)  # labels (kept whatever the run conditions on)
    torch.rand(n, generator=g)  # text
    torch.randint(0, 3, (n,), generator=g), torch.randint(1, max(1, T // 2) + 1, (n,), generator=g)  # context mask
    torch.rand(n, generator=g)  # context dropout
    return torch.rand(n, generator=g) >= dropout


# ------------------------------------------------------------------------ (a) the tokens training feeds
def test_training_feeds_the_encoders_tokens_of_frame_0_and_zeros_where_dropped(make, encoder):
    tr = make("conditions.image_dropout=0.5", "train.batch_size=6")
    seen = {True: 0, False: 0}
    for step in range(3):
        batch = tr.task.read_batch(step)
        x0, cond, t, noise, draws = tr.task.make_batch(step, batch)
        expected = encoder(batch["video"][:, :, 0])  # frame 0's pixels, encoded independently
        kept = draws.image_kept
        assert cond.image_tokens.shape == (6, TOKENS, IMG) and expected.abs().amax() > 0
        assert torch.equal(kept, replayed_image_kept(tr, step, x0.shape, 0.5))  # the last draw of the step
        assert torch.equal(cond.image_tokens[kept], expected[kept])
        assert torch.equal(cond.image_tokens[~kept], torch.zeros_like(expected[~kept]))
        for k in kept.tolist():
            seen[k] += 1
    assert seen[True] and seen[False]


def test_the_dropout_rate_is_respected_over_a_big_batch(make):
    n, p = 400, 0.25
    tr = make(f"conditions.image_dropout={p}", f"train.batch_size={n}")
    _, cond, _, _, draws = tr.task.make_batch(0)
    dropped = int((~draws.image_kept).sum())
    nulled = int((cond.image_tokens.flatten(1).abs().amax(dim=1) == 0).sum())  # all-zero rows: the null image
    assert dropped == nulled
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(dropped - n * p) < 4 * sd, (dropped, n * p)


def test_image_tokens_change_no_draw_of_the_same_run_without_them(make):
    """The image dropout comes after every other draw: x0, timesteps, noise, captions and context frames are the text
    model's (tests/test_golden.py pins the batches of runs without image tokens)."""
    with_tokens = make(name="tokens")
    plain = make("model.image_encoder=none", "model.image_token_dim=null", "model.resampler_queries=16",
                 "model.resampler_depth=4", "model.resampler_heads=12", "model.resampler_head_channels=64",
                 "conditions.image=false", "image.encoder=null", name="plain")
    for step in range(2):
        a, b = with_tokens.task.make_batch(step), plain.task.make_batch(step)
        for i in (0, 2, 3):
            assert torch.equal(a[i], b[i])
        for name in ("text", "text_mask", "context", "context_mask"):
            assert torch.equal(getattr(a[1], name), getattr(b[1], name)), name
        assert b[1].image_tokens is None and b[4].image_kept is None and a[4].image_kept is not None


def test_a_joint_batchs_single_images_hear_no_image(make):
    tr = make("data.use_image_num=2", "data.image_captions=any", "conditions.image_dropout=0.0")
    x0, cond, t, noise, _ = tr.task.make_batch(0)
    assert x0.shape[2] == T + 2 and cond.image_tokens.shape == (B, TOKENS, IMG)
    model = tr.task.raw_model
    per_frame = model.image_tokens(x0, cond, None, num_images=2).view(B, T + 2, -1)  # what each frame attends to
    assert per_frame[:, :T].abs().amax(dim=-1).gt(0).all()  # the clip's frames hear its image
    assert torch.equal(per_frame[:, T:], torch.zeros_like(per_frame[:, T:]))  # its single images do not


# ------------------------------------------------------------------------ (b) the latent cache
def test_the_cache_stores_and_returns_the_tokens_and_cached_batches_equal_uncached(make, encoder):
    seed = "data.seed=31"  # a cache of its own (the test cache directory lives for the session)
    cached = make("data.latent_cache=true", seed, name="cached")
    assert cached.task.dataset.encoded == 8
    item = cached.task.dataset[3]
    raw = cached.task.dataset.dataset[3]  # the wrapped dataset's pixels
    assert item["image_tokens"].shape == (TOKENS, IMG)
    torch.testing.assert_close(item["image_tokens"], encoder(raw["video"][None, :, 0])[0], rtol=0, atol=1e-6)
    again = make("data.latent_cache=true", seed, name="again")
    assert again.task.dataset.encoded == 0 and again.task.dataset.dir == cached.task.dataset.dir  # read back
    plain = make(seed, name="plain")
    for step in range(2):
        batch = again.task.read_batch(step)
        assert "image_tokens" in batch and "video" not in batch  # collate carries them; no pixels
        a, b = again.task.make_batch(step, batch), plain.task.make_batch(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[4].image_kept, b[4].image_kept)
        assert torch.equal(a[1].image_tokens, b[1].image_tokens)


def test_the_cache_key_changes_only_with_image_tokens_on(make, clip_dir, encoder, tmp_path):
    c = make(name="key").cfg
    data, ds, ae = to_dict(c)["data"], build_dataset(c.data), build_autoencoder(c.autoencoder)
    old = hashlib.sha256((autoencoder_fingerprint(ae) + dataset_fingerprint(data, ds)).encode()).hexdigest()[:32]
    assert LatentCache(ds, ae, data, cache_dir=str(tmp_path)).dir.name == old  # existing caches keep their key
    other = CLIPImageEncoder(save_clip(tmp_path / "other", seed=1))  # other weights: another encoder
    dirs = {LatentCache(ds, ae, data, cache_dir=str(tmp_path), image_encoder=e).dir.name for e in (encoder, other)}
    assert len(dirs) == 2 and old not in dirs
    copy = CLIPImageEncoder(shutil.copytree(clip_dir, tmp_path / "copy"))  # the same content elsewhere: the same key
    assert LatentCache(ds, ae, data, cache_dir=str(tmp_path), image_encoder=copy).dir.name == \
        LatentCache(ds, ae, data, cache_dir=str(tmp_path), image_encoder=encoder).dir.name


# ------------------------------------------------------------------------ (c) training
IMAGE_BRANCH = ("image_proj_model.", "to_k_ip.weight", "to_v_ip.weight")


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, clip_dir, tmp_path_factory):
    """The tiny model trained 2 steps (no image dropout: every example trains the image branch), and its weights
    before training."""
    run = tmp_path_factory.mktemp("clip-run") / "run"
    cfg = load_config(overrides=overrides(tiny_bert_dir, clip_dir, "conditions.image_dropout=0.0", "train.lr=1e-3"))
    tr = Trainer(cfg, run, quiet=True)
    before = {k: v.clone() for k, v in tr.task.raw_model.state_dict().items()}
    last = tr.train()
    assert torch.isfinite(torch.tensor(last["loss"])) and tr.step == 2
    return run, before


def test_a_two_step_run_trains_the_image_branch(trained):
    run, before = trained
    after = moviola.load_model(run, weights="model").state_dict()
    branch = [k for k in after if k.startswith(IMAGE_BRANCH[0]) or k.endswith(IMAGE_BRANCH[1:])]
    assert branch and any(k.startswith("image_proj_model.") for k in branch)
    assert before.keys() == after.keys()
    unchanged = [k for k in branch if torch.equal(before[k], after[k])]
    assert not unchanged, unchanged  # to_v_ip moved off zero in step 1, the rest in step 2
    saved = json.loads((run / "config.json").read_text())
    assert saved["image"]["encoder"] and saved["conditions"]["image"] is True


# ------------------------------------------------------------------------ (d) sampling
def first_frame(seed: int = 0) -> torch.Tensor:
    return torch.rand(3, S, S, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def spy(pipe: Pipeline) -> list:
    """Record the conditions the model is called with."""
    seen, inner = [], pipe.model.forward
    pipe.model.forward = lambda x, t, cond=None, **kw: seen.append(cond) or inner(x, t, cond, **kw)
    return seen


def test_the_pipeline_gives_the_encoders_tokens_of_the_image_and_the_null_branch_zeros(trained, encoder):
    pipe = moviola.load_pipeline(trained[0], device="cpu")
    seen = spy(pipe)
    image = first_frame()
    video = pipe(prompt=[PROMPT, PROMPT], image=image, steps=2, cfg=3.0, seed=0)
    assert video.shape == (2, 3, T, S, S) and len(seen) == 2
    expected = encoder(image[None]).expand(2, -1, -1)  # the image at the frame size: as training encodes frame 0
    for cond in seen:  # each step: the conditional branch, then the null branch, in one batch
        tokens = cond.image_tokens
        assert tokens.shape == (4, TOKENS, IMG)
        torch.testing.assert_close(tokens[:2], expected, rtol=0, atol=1e-6)
        assert torch.equal(tokens[2:], torch.zeros_like(tokens[2:]))
        assert cond.context_mask[:, 0, 0].flatten().tolist() == [1.0] * 4  # frame 0 also given (the hybrid)
    assert torch.equal(pipe(prompt=[PROMPT, PROMPT], image=image, steps=2, cfg=3.0, seed=0), video)  # reproducible
    assert not torch.equal(pipe(prompt=[PROMPT, PROMPT], image=first_frame(1), steps=2, cfg=3.0, seed=0), video)


def test_without_an_image_the_model_gets_no_tokens(trained):
    pipe = moviola.load_pipeline(trained[0], device="cpu")
    seen = spy(pipe)
    pipe(prompt=[PROMPT], steps=2, seed=0)
    assert all(c.image_tokens is None and c.context is None for c in seen)  # the null image: text to video


def test_a_tokens_model_without_context_frames_takes_frame_0_as_tokens_only(tiny_bert_dir, clip_dir, encoder):
    cfg = load_config(overrides=overrides(tiny_bert_dir, clip_dir, "conditions.context_frames=false"))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.conditions, 3)
    pipe = Pipeline(model, build_autoencoder(cfg.autoencoder), build_schedule(cfg.diffusion), cfg, device="cpu")
    seen = spy(pipe)
    image = first_frame(2)
    pipe(prompt=[PROMPT], image=image, steps=2, cfg=2.0, seed=0)
    tokens = seen[0].image_tokens
    assert seen[0].context is None and tokens.shape == (2, TOKENS, IMG)
    torch.testing.assert_close(tokens[:1], encoder(image[None]), rtol=0, atol=1e-6)
    assert torch.equal(tokens[1:], torch.zeros_like(tokens[1:]))
    with pytest.raises(ValueError, match="first frame only.*got frame 2"):
        pipe(prompt=[PROMPT], frames={0: image, 2: image}, steps=2)


def test_moviola_sample_image_and_eval_shapes_image_to_video(trained, tmp_path, capsys):
    from moviola.eval.shapes_eval import evaluate_checkpoint

    from PIL import Image

    png = tmp_path / "first.png"
    Image.fromarray(((first_frame() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(png)
    out = tmp_path / "v.mp4"
    assert main(["sample", str(trained[0]), "--prompt", PROMPT, "--image", str(png), "--steps", "2", "--out", str(out),
                 "--quiet", "--device", "cpu"]) == 0
    assert out.is_file()
    r = evaluate_checkpoint(trained[0], per_class=1, steps=1, device="cpu", image_to_video=True, batch_size=48)
    assert "image_to_video" in r and r["settings"]["image_to_video"] is True


# ------------------------------------------------------------------------ (e) refusals, before any compute
def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_conditions_image_without_image_encoder_is_refused(tiny_bert_dir):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides(tiny_bert_dir, None))
    msg = one_line(e)
    assert "conditions.image" in msg and "image.encoder" in msg


def test_an_image_encoder_without_image_tokens_is_refused(tiny_bert_dir, clip_dir):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model.family=videocrafter", "conditions.text_channels=24", f"text.encoder={tiny_bert_dir}",
                               f"image.encoder={clip_dir}"])
    msg = one_line(e)
    assert "image.encoder" in msg and "conditions.image" in msg


def test_a_token_width_other_than_image_token_dim_is_refused_before_training(make, tmp_path):
    narrow = save_clip(tmp_path / "narrow", width=12)
    with pytest.raises(ConfigError) as e:
        make(f"image.encoder={narrow}", name="narrow-run")
    msg = one_line(e)
    assert f"model.image_token_dim={IMG}" in msg and "12-wide" in msg and "model.image_token_dim=12" in msg
    assert not (tmp_path / "narrow-run").exists()


def test_a_missing_encoder_directory_is_refused_at_load_pipeline(trained, clip_dir, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "moved"
    shutil.copytree(trained[0] / "checkpoints" / "step_00000002", ckpt)
    tree = json.loads((ckpt / "config.json").read_text())
    tree["image"]["encoder"] = str(tmp_path / "nowhere" / "clip")  # the run moved to another machine
    (ckpt / "config.json").write_text(json.dumps(tree))
    import moviola.pipelines.generate as generate

    real = generate.load_model
    monkeypatch.setattr(generate, "load_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    with pytest.raises(ConfigError) as e:
        moviola.load_pipeline(ckpt, device="cpu")
    msg = one_line(e)
    assert "image.encoder" in msg and "nowhere" in msg and "image_encoder=DIR" in msg and "config.json" in msg
    code = main(["sample", str(ckpt), "--prompt", PROMPT, "--image", "x.png", "--out", str(tmp_path / "x.mp4"),
                 "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "image.encoder" in err, err
    narrow = save_clip(tmp_path / "narrow", width=12)
    with pytest.raises(ConfigError, match=f"model.image_token_dim={IMG}.*12-wide"):
        moviola.load_pipeline(ckpt, device="cpu", image_encoder=narrow)
    monkeypatch.setattr(generate, "load_model", real)
    pipe = moviola.load_pipeline(ckpt, device="cpu", image_encoder=clip_dir)  # where the encoder is here
    assert pipe(prompt=[PROMPT], image=first_frame(), steps=1, seed=0).shape == (1, 3, T, S, S)


def test_a_checkpoint_without_an_encoder_loads_and_names_the_key_when_given_an_image(trained, tmp_path):
    """A config saved before the image section (or converted from the official weights) loads with no encoder;
    its model samples from prompts, and an image asks for the encoder."""
    ckpt = tmp_path / "old"
    shutil.copytree(trained[0] / "checkpoints" / "step_00000002", ckpt)
    tree = json.loads((ckpt / "config.json").read_text())
    del tree["image"]
    (ckpt / "config.json").write_text(json.dumps(tree))
    assert config_from_json(ckpt / "config.json").image.encoder is None
    assert build_config(tree).image == type(build_config(tree).image)()  # the section's defaults
    pipe = moviola.load_pipeline(ckpt, device="cpu")
    assert pipe(prompt=[PROMPT], steps=1, seed=0).shape == (1, 3, T, S, S)
    with pytest.raises(ConfigError) as e:
        pipe(prompt=[PROMPT], image=first_frame(), steps=1, seed=0)
    msg = one_line(e)
    assert "image.encoder" in msg and "image_encoder=DIR" in msg
