"""Image-video joint training on a causal VAE (W.A.L.T's recipe): each appended image is encoded alone, as a
one-frame video, into one latent frame after the video's latent frames. Tiny causal VAE (8× space, 4× time),
tiny W.A.L.T and tiny Latte, two training steps each; plus the pin that a frame VAE / identity run keeps its
old batches (their per-frame encoding is what encoding each image alone gives)."""
from __future__ import annotations

import json

import pytest
import torch

from moviola.autoencoders.causal_vae import CausalVAE
from moviola.config import ConfigError, load_config
from moviola.data.joint import caption_groups, extra_image_frames
from moviola.training.trainer import Trainer

FRAMES, SIZE, IMAGES = 9, 32, 2  # 9 frames -> 1 + 8/4 = 3 latent frames of 4×4; then 2 image latent frames
LATENT_T = 1 + (FRAMES - 1) // 4

COMMON = ["name=joint", "conditions.num_classes=48", f"data.size={SIZE}", f"data.frames={FRAMES}", "data.count=6",
          f"data.use_image_num={IMAGES}", "train.batch_size=2", "train.steps=2", "train.checkpoint_every=1000",
          "train.log_every=1", "train.device=cpu", "train.precision=fp32", "train.lr=1e-3", "sample.steps=2",
          "diffusion.prediction=v", "autoencoder.kind=causal_vae"]
FAMILIES = {
    "walt": ["model.family=walt", "model.hidden_size=16", "model.depth=2", "model.num_heads=2",
             f"model.pos_grid=[{LATENT_T},4,4]"],  # default STW window: 3×2×2
    "latte": ["model.size=tiny", "model.patch_size=2", "model.hidden_size=32", "model.depth=2",
              "model.num_heads=2", "model.layout=factorized_attention"],
}


@pytest.fixture(scope="module")
def vae_path(tmp_path_factory):
    """A tiny causal VAE saved as an export (save_pretrained), for autoencoder.path."""
    torch.manual_seed(0)
    vae = CausalVAE(base_channels=8, channel_mults=(1, 1, 2, 2), num_res_blocks=1, latent_channels=4,
                    norm_groups=4).eval()
    path = tmp_path_factory.mktemp("vae") / "causal"
    vae.save_pretrained(path)
    return path


def config(vae_path, family: str, *extra: str):
    return load_config(overrides=[*COMMON, f"autoencoder.path={vae_path}", *FAMILIES[family], *extra])


def test_a_causal_vae_takes_joint_images_and_the_other_rules_stay(vae_path):
    cfg = config(vae_path, "walt")
    assert cfg.data.use_image_num == IMAGES
    with pytest.raises(ConfigError, match="patch_embed=frame"):  # a single image cannot fill a tubelet
        config(vae_path, "latte", "model.patch_embed=tubelet", "model.tubelet_size=3")
    with pytest.raises(ConfigError, match="data.count must be at least 2"):
        config(vae_path, "walt", "data.count=1")


@pytest.mark.parametrize("family", ["walt", "latte"])
def test_each_image_is_one_latent_frame_encoded_alone_after_the_video(vae_path, tmp_path, family):
    trainer = Trainer(config(vae_path, family), tmp_path / "run", quiet=True)
    task = trainer.task
    vae = task.autoencoder
    step = 0
    x0, cond, t, noise, _ = trainer.make_batch(step)
    B = x0.shape[0]
    assert x0.shape == (B, 4, LATENT_T + IMAGES, 4, 4) and noise.shape == x0.shape
    assert cond.labels.shape == (B, LATENT_T + IMAGES)  # a label per latent frame, the images' own

    batch = task.read_batch(step)
    assert torch.equal(x0[:, :, :LATENT_T], vae.encode(batch["video"]))  # the video's latent frames first
    idx = task.plan.indices(step, len(task.dataset))
    images, labels = extra_image_frames(task.dataset, idx, IMAGES, trainer.cfg.train.seed, step)  # (B, 3, n, H, W)
    assert torch.equal(cond.labels[:, LATENT_T:], labels)
    for b in range(B):
        for j in range(IMAGES):
            alone = vae.encode(images[b:b + 1, :, j:j + 1])  # one image, as a one-frame video: (1, c, 1, h, w)
            got = x0[b:b + 1, :, LATENT_T + j:LATENT_T + j + 1]
            torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)  # a batch of 1 vs B·n: float noise only
            other = vae.encode(images[b:b + 1, :, 1 - j:2 - j])  # the other image: far off
            assert (got - other).abs().max() > 100 * 1e-5
    # the causal VAE would refuse the images as one clip (2 frames is not 1 + 4k), and an image inside a clip
    # is not its own latent frame: encoding each alone is what makes an image a one-frame video
    with pytest.raises(ValueError, match=r"1 \+ 4·k"):
        vae.encode(images)


@pytest.mark.parametrize("family", ["walt", "latte"])
def test_trains_two_steps_with_the_images_as_images(vae_path, tmp_path, family):
    trainer = Trainer(config(vae_path, family), tmp_path / "run", quiet=True)
    calls = []
    trainer.model.register_forward_pre_hook(
        lambda m, args, kw: calls.append((args[0].shape[2], kw.get("num_images"))), with_kwargs=True)
    stw = []  # W.A.L.T: how many frames each spatiotemporal-window attention windows, of how many
    if family == "walt":
        for block in trainer.task.raw_model.blocks:
            block.spatiotemporal.attn.register_forward_pre_hook(
                lambda m, args: stw.append((args[0].shape[1], args[2])))
    last = trainer.train()
    assert torch.isfinite(torch.tensor(last["loss"]))
    assert trainer.step == 2
    assert calls and set(calls) == {(LATENT_T + IMAGES, IMAGES)}
    if family == "walt":
        assert stw and set(stw) == {(LATENT_T + IMAGES, LATENT_T)}  # the last 2 frames get the identity mask


def test_walt_on_the_batch_keeps_video_and_images_apart(vae_path, tmp_path):
    """With num_images = 2, the STW layers window the 3 video latent frames and give each image the identity:
    the video's output does not depend on the images, nor an image's on the video or the other image."""
    trainer = Trainer(config(vae_path, "walt"), tmp_path / "run", quiet=True)
    model = trainer.task.raw_model.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # off the zero initialization, so outputs depend on inputs
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    x0, cond, t, _, _ = trainer.make_batch(0)
    with torch.no_grad():
        out = model(x0, t, cond, num_images=IMAGES)
        y = x0.clone()
        y[:, :, LATENT_T + 1] = torch.randn_like(y[:, :, LATENT_T + 1])  # another second image
        other_image = model(y, t, cond, num_images=IMAGES)
        z = x0.clone()
        z[:, :, 0] = torch.randn_like(z[:, :, 0])  # another first video frame
        other_video = model(z, t, cond, num_images=IMAGES)
        as_video = model(y, t, cond, num_images=0)  # the same frames, all taken as video
    same = dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(other_image[:, :, :LATENT_T + 1], out[:, :, :LATENT_T + 1], **same)
    torch.testing.assert_close(other_video[:, :, LATENT_T:], out[:, :, LATENT_T:], **same)
    assert not torch.allclose(other_video[:, :, 1:LATENT_T], out[:, :, 1:LATENT_T], **same)  # the video mixes
    assert not torch.allclose(as_video[:, :, :LATENT_T], out[:, :, :LATENT_T], **same)  # without the mask, it leaks


def test_a_frame_vae_or_identity_batch_is_the_old_per_frame_encoding(tmp_path):
    """Encoding each image alone equals encoding the (B, 3, n, H, W) images frame by frame, bit for bit."""
    cfg = load_config(overrides=["name=id", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32",
                                 "model.depth=2", "model.num_heads=2", "conditions.num_classes=48", "data.size=32",
                                 "data.frames=4", "data.count=8", "data.use_image_num=2", "train.batch_size=2",
                                 "train.device=cpu", "train.precision=fp32", "train.steps=1"])
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    task = trainer.task
    x0, *_ = trainer.make_batch(3)
    idx = task.plan.indices(3, len(task.dataset))
    images, _ = extra_image_frames(task.dataset, idx, 2, cfg.train.seed, 3)
    assert torch.equal(x0[:, :, 4:], images) and torch.equal(task._encode_images(images), images)


def test_from_the_latent_cache_each_image_is_the_first_latent_frame_of_another_clip(vae_path, tmp_path, monkeypatch):
    """data.latent_cache with joint images: an image is a cached clip's first latent frame, which a causal VAE
    computes from pixel frame 0 alone: it equals encoding that frame as a one-frame video."""
    monkeypatch.setenv("MOVIOLA_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(config(vae_path, "walt", "data.latent_cache=true"), tmp_path / "run", quiet=True)
    task = trainer.task
    vae = task.autoencoder
    raw = task.dataset.dataset  # the pixel clips under the cache
    alone = torch.cat([vae.encode(raw[k]["video"][None, :, :1]) for k in range(len(raw))])  # (N, c, 1, h, w)
    labels_of = torch.tensor([int(raw[k]["label"]) for k in range(len(raw))])
    for step in range(3):
        x0, cond, *_ = trainer.make_batch(step)
        idx = task.plan.indices(step, len(task.dataset))
        for b in range(x0.shape[0]):
            torch.testing.assert_close(x0[b:b + 1, :, :LATENT_T], vae.encode(raw[idx[b]]["video"][None]),
                                       rtol=1e-5, atol=1e-5)  # the video's own latent frames
            for j in range(IMAGES):
                got = x0[b, :, LATENT_T + j:LATENT_T + j + 1]
                dist = (alone[:, :, :] - got[None]).flatten(1).abs().amax(1)
                k = int(dist.argmin())
                assert dist[k] < 1e-5 and k != idx[b]  # frame 0 of another clip, encoded alone
                assert int(cond.labels[b, LATENT_T + j]) == int(labels_of[k])  # with that clip's label


class _Clips(torch.utils.data.Dataset):
    """Clip i: a (1, 3, 1, 1) video holding i, i + 0.25, i + 0.5; captions cycle over ``captions``."""

    def __init__(self, n, captions):
        self.n, self.captions = n, captions

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"video": (i + torch.tensor([0.0, 0.25, 0.5])).reshape(1, 3, 1, 1),
                "caption": self.captions[i % len(self.captions)]}


def test_with_text_a_videos_images_come_from_other_clips_with_its_caption():
    data = _Clips(12, ["a red circle", "a blue square", "a green triangle"])
    groups = caption_groups(data)
    assert groups == {"a red circle": [0, 3, 6, 9], "a blue square": [1, 4, 7, 10], "a green triangle": [2, 5, 8, 11]}
    seen = set()
    for step in range(20):
        own = [step % 12, (step * 5) % 12]
        images, labels = extra_image_frames(data, own, 3, 0, step, groups=groups)
        assert labels is None and images.shape == (2, 1, 3, 1, 1)
        for b, i in enumerate(own):
            for j in range(3):
                value = float(images[b, 0, j, 0, 0])
                k, f = int(value), round((value % 1) / 0.25)
                assert k != i and k % 3 == i % 3  # another clip, with the same caption
                seen.add((k % 3, f))
    assert {f for _, f in seen} == {0, 1, 2}  # any frame of a frame-wise clip
    first, _ = extra_image_frames(data, [0, 1], 4, 0, 0, groups=groups, first_only=True)
    assert torch.equal(first % 1, torch.zeros_like(first))  # a causal VAE's latents: only the first frame
    alone = _Clips(4, ["a", "b", "c"])  # "a" has clips 0 and 3, "b" only clip 1
    with pytest.raises(ValueError, match="clip 1 is the only one with the caption 'b'"):
        extra_image_frames(alone, [1], 1, 0, 0, groups=caption_groups(alone))


def test_joint_images_with_text_refuse_a_caption_with_one_clip_before_training(tmp_path, tiny_bert_dir):
    base = ["name=t2v-img", "model.size=tiny", "model.patch_size=8", "model.hidden_size=32", "model.depth=2",
            "model.num_heads=2", "conditions.text_channels=24", f"text.encoder={tiny_bert_dir}", "text.max_length=10",
            "data.size=32", "data.frames=4", "data.use_image_num=1", "train.batch_size=2", "train.device=cpu",
            "train.precision=fp32", "train.steps=1"]
    with pytest.raises(ConfigError, match=r"have one clip only, e.g. 'a .*'; give each caption two clips"):
        Trainer(load_config(overrides=[*base, "data.count=8"]), tmp_path / "few", quiet=True)  # 8 clips, 40 captions
    trainer = Trainer(load_config(overrides=[*base, "data.count=80"]), tmp_path / "ok", quiet=True)
    assert all(len(m) == 2 for m in trainer.task.image_groups.values())
    x0, *_ = trainer.make_batch(0)
    idx = trainer.task.plan.indices(0, 80)
    data = trainer.task.dataset
    for b, i in enumerate(idx):  # the identity autoencoder: the image is a frame of clip i ± 40, same caption
        mate = data[(i + 40) % 80]["video"]
        assert any(torch.equal(x0[b, :, 4], mate[:, f]) for f in range(4))


def test_a_run_saved_before_image_captions_keeps_images_from_any_clip(tmp_path):
    """data.image_captions: new configs take a video's images from clips with its caption; a run saved before
    the key existed resumes with the images it trained on (any clip), so its batches stay the same."""
    from moviola.config import config_from_json, save_config

    cfg = load_config(overrides=["data.use_image_num=2", "conditions.text_channels=6"])
    assert cfg.data.image_captions == "same"
    save_config(cfg, tmp_path / "config.json")
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["data"]["image_captions"] == "same" and config_from_json(tmp_path / "config.json") == cfg
    del raw["data"]["image_captions"]  # as a run saved before the key wrote it
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert config_from_json(tmp_path / "config.json").data.image_captions == "any"
    for key, value in (("data", "use_image_num"), ("conditions", "text_channels")):  # where it changes nothing
        other = json.loads(json.dumps(raw))
        other[key][value] = 0 if value == "use_image_num" else None
        (tmp_path / "config.json").write_text(json.dumps(other))
        assert config_from_json(tmp_path / "config.json").data.image_captions == "same"  # old configs compare equal
