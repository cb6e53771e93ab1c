"""The frame rate as a condition, end to end (VideoCrafter's ``fps_cond``): a frame stride per clip in the data
(Moving Shapes and folders), fps = data.fps / stride in the trainer's batch, and one meaning of ``fps`` at sampling
(the condition and the rate the file plays at); a model without the condition keeps ``--fps`` as the file's rate."""
from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest
import torch

from moviola.cli import main
from moviola.config import ConfigError, load_config, to_dict
from moviola.data import build_dataset
from moviola.data.latent_cache import LatentCache, dataset_fingerprint
from moviola.data.shapes import MovingShapes, sample_clip
from moviola.data.strides import draw_stride
from moviola.models.videocrafter import VideoCrafter
from moviola.training.trainer import Trainer
from moviola.video import probe_video

STRIDES = [1, 2, 3]
TRAIN = ["train.batch_size=4", "train.steps=2", "train.checkpoint_every=1000", "train.log_every=1",
         "train.device=cpu", "train.precision=fp32", "train.lr=1e-3", "sample.steps=2", "sample.cfg=2.0"]
VC = ["name=fps", "model.family=videocrafter", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
      "model.num_heads=2", "model.norm_num_groups=8", "autoencoder.kind=identity", "data.size=32", "data.frames=4",
      "data.count=8", "conditions.num_classes=48", "conditions.fps=true", *TRAIN]


def centroids(video: np.ndarray) -> np.ndarray:
    """(T, 2) foreground centroids (x, y) of a uint8 (T, S, S, 3) clip, weighted by brightness."""
    w = video.max(axis=-1).astype(np.float64)
    ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]
    return np.stack([(w * xs).sum((1, 2)) / w.sum((1, 2)), (w * ys).sum((1, 2)) / w.sum((1, 2))], axis=1)


# ------------------------------------------------------------------------------------------------ data
def test_each_clip_draws_its_stride_from_seed_and_index_the_same_every_time_and_covers_the_list():
    a = MovingShapes(count=60, frames=4, seed=3, strides=STRIDES)
    b = MovingShapes(count=60, frames=4, seed=3, strides=STRIDES, cache=False)
    drawn = [a.stride_of(i) for i in range(60)]
    assert drawn == [b.stride_of(i) for i in range(60)] == [draw_stride(STRIDES, 3, i) for i in range(60)]
    assert set(drawn) == set(STRIDES)  # every stride of the list is drawn
    assert drawn != [MovingShapes(count=60, frames=4, seed=4, strides=STRIDES).stride_of(i) for i in range(60)]
    for i in (0, 7, 59):  # the item carries it, and is the clip at that stride, read twice alike
        item = a[i]
        assert item["stride"] == drawn[i] and torch.equal(item["video"], b[i]["video"])
        ref = sample_clip(3, i, "train", 32, 4, stride=drawn[i])["video"]
        assert torch.equal(item["video"], torch.from_numpy(ref).permute(3, 0, 1, 2).float() / 127.5 - 1)
    assert "stride" not in MovingShapes(count=2, frames=4)[0]  # no strides: today's items


@pytest.mark.parametrize("stride", [2, 3])
def test_a_shapes_clip_at_stride_s_is_every_sth_frame_of_the_longer_clip_and_moves_s_times_farther(stride):
    frames, index = 5, 1  # train index 1: a red circle moving right
    clip = sample_clip(0, index, "train", 32, frames, stride=stride)
    longer = sample_clip(0, index, "train", 32, (frames - 1) * stride + 1)
    assert clip["direction"] == "right" and clip["video"].shape == (frames, 32, 32, 3)
    assert np.array_equal(clip["video"], longer["video"][::stride])
    step = np.diff(centroids(clip["video"]), axis=0)  # pixels per frame
    np.testing.assert_allclose(step[:, 0], stride * 32 / 32, atol=0.02)
    np.testing.assert_allclose(step[:, 1], 0, atol=0.02)
    one = np.diff(centroids(sample_clip(0, index, "train", 32, frames)["video"]), axis=0)
    np.testing.assert_allclose(step[:, 0], stride * one[:, 0], atol=0.03)


def test_a_stride_that_does_not_fit_is_refused_in_one_line_before_any_compute(tmp_path, capsys):
    cfg = load_config(overrides=["data.frames=8", "data.frame_strides=[1,3]"])  # 7·3 + 1 = 22 > 21
    with pytest.raises(ConfigError) as e:
        build_dataset(cfg.data)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in ("data.frames=8", "stride 3", "22", "21", "data.bounce")), msg
    assert len(build_dataset(load_config(overrides=["data.frames=8", "data.frame_strides=[1,3]",
                                                    "data.bounce=true", "data.count=2"]).data)[0]["video"][0]) == 8
    build_dataset(load_config(overrides=["data.frames=7", "data.frame_strides=[1,3]", "data.count=2"]).data)  # 19 fits
    # through the CLI: one error line, no run directory, before the model (or anything else) is built
    (tmp_path / "cfg.yaml").write_text("model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}\n"
                                       "data: {size: 32, frames: 8, frame_strides: [1, 3], count: 4}\n")
    code = main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "data.frames=8" in err[0] and "data.bounce" in err[0], err
    assert not (tmp_path / "run").exists()
    for bad, words in ((["data.frame_strides=[]"], "empty"), (["data.frame_strides=[0,1]"], "positive"),
                       (["data.frame_stride=2", "data.frame_strides=[1,2]"], "give one"), (["data.fps=0"], "data.fps"),
                       (["conditions.fps=true"], "latte")):  # a family without the condition: the usual refusal
        with pytest.raises(ConfigError, match=words):
            load_config(overrides=bad)


def test_a_folder_clip_takes_its_own_stride_from_its_file(tmp_path):
    from moviola.data.folders import VideoFolder
    from moviola.data.shapes import render_clip
    from moviola.video import save_video

    for k, (colour, n) in enumerate((("red", 12), ("green", 12), ("blue", 8), ("yellow", 5))):
        save_video(render_clip(colour, "square", "right", frames=n), tmp_path / f"{k}.mp4", fps=24)
    ds = VideoFolder(tmp_path, frames=4, strides=STRIDES, stride_seed=1)
    again = VideoFolder(tmp_path, frames=4, strides=STRIDES, stride_seed=1)
    for i in range(len(ds)):
        item = ds[i]
        s = item["stride"]
        assert s == again.stride_of(i) and s in STRIDES
        one = VideoFolder(tmp_path, frames=4, stride=s)  # the folder's single-stride clip of the same file
        j = [f.name for f in one.files].index(ds.files[i].name)
        assert torch.equal(item["video"], one[j]["video"])
    # 4 frames at stride s span 3s + 1: the 5-frame file drew stride 2 (from its name) and is too short for it
    assert draw_stride(STRIDES, 1, zlib.crc32(b"3.mp4")) == 2
    assert ds.skipped["too_short"] == 1 and "3.mp4" not in [f.name for f in ds.files]
    assert "3.mp4" in [f.name for f in VideoFolder(tmp_path, frames=4).files]  # at stride 1 it fits


def test_the_latent_cache_key_changes_only_when_frame_strides_is_set(tmp_path):
    from moviola.autoencoders import build_autoencoder

    def key(*overrides):
        cfg = load_config(overrides=["data.frames=4", "data.count=4", *overrides])
        return dataset_fingerprint(to_dict(cfg)["data"], build_dataset(cfg.data))

    old = {k: v for k, v in to_dict(load_config(overrides=["data.frames=4", "data.count=4"]))["data"].items()
           if k not in ("frame_strides", "fps")}  # a config saved before these keys
    assert key() == dataset_fingerprint(old, build_dataset(load_config(overrides=["data.frames=4",
                                                                                  "data.count=4"]).data))
    assert key("data.fps=30") == key()  # the rate is no part of an item
    assert key("data.frame_strides=[1,2]") != key() and key("data.frame_strides=[1,3]") != key("data.frame_strides=[1,2]")
    # the cache keeps each clip's stride beside its latent
    cfg = load_config(overrides=["data.frames=4", "data.count=4", "data.frame_strides=[1,2,3]"])
    ds = build_dataset(cfg.data)
    cache = LatentCache(ds, build_autoencoder(cfg.autoencoder), to_dict(cfg)["data"], cache_dir=str(tmp_path))
    cache.fill()
    reread = LatentCache(ds, build_autoencoder(cfg.autoencoder), to_dict(cfg)["data"], cache_dir=str(tmp_path))
    assert [reread[i]["stride"] for i in range(4)] == [ds.stride_of(i) for i in range(4)] and reread.encoded == 0


# ------------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def fps_run(tmp_path_factory):
    """A tiny class- and fps-conditioned VideoCrafter trained two steps on strides [1, 2, 3]."""
    run = tmp_path_factory.mktemp("fps") / "run"
    trainer = Trainer(load_config(overrides=[*VC, "data.frame_strides=[1,2,3]", "data.fps=24"]), run, quiet=True)
    trainer.train()
    return trainer, run


def test_the_batch_carries_data_fps_over_each_clips_stride_and_training_runs(fps_run, tmp_path):
    trainer, run = fps_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    ds = trainer.dataset
    for step in range(3):
        idx = trainer.plan.indices(step, len(ds))
        _, cond, *_ = trainer.make_batch(step)
        expected = torch.tensor([24.0 / ds.stride_of(i) for i in idx])
        assert cond.fps.dtype == torch.float32 and torch.equal(cond.fps, expected), (cond.fps, expected)
    # from a latent cache too, and one stride is constant fps with a one-line warning
    cached = Trainer(load_config(overrides=[*VC, "data.frame_strides=[1,2,3]", "data.latent_cache=true", "data.fps=24",
                                            "name=cached"]), tmp_path / "cached", quiet=True)
    assert torch.equal(cached.make_batch(1)[1].fps, trainer.make_batch(1)[1].fps)
    with pytest.warns(UserWarning, match="cannot learn speed from one rate") as record:
        one = Trainer(load_config(overrides=[*VC, "data.fps=30", "name=one"]), tmp_path / "one", quiet=True)
    assert "\n" not in str(record[0].message)
    assert torch.equal(one.make_batch(0)[1].fps, torch.full((4,), 30.0))


# ------------------------------------------------------------------------------------------------ sampling
@pytest.fixture()
def seen_fps(monkeypatch):
    """Every fps the VideoCrafter forward pass is given."""
    seen = []
    embed = VideoCrafter._embedding

    def recording(self, cond, batch, frames):
        seen.append(None if cond is None or cond.fps is None else cond.fps.tolist())
        return embed(self, cond, batch, frames)

    monkeypatch.setattr(VideoCrafter, "_embedding", recording)
    return seen


def test_pipe_fps_reaches_the_model_and_the_written_file_plays_at_it(fps_run, seen_fps, tmp_path, capsys):
    import moviola

    _, run = fps_run
    pipe = moviola.load_pipeline(run, device="cpu")
    assert pipe.frame_rate() == 24.0 and pipe.frame_rate(12) == 12.0  # data.fps / frame_strides[0]
    video = pipe(labels=[3, 5], fps=8, steps=2)
    assert video.shape == (2, 3, 4, 32, 32) and seen_fps and all(f == [8.0] * len(f) for f in seen_fps)
    seen_fps.clear()
    pipe(labels=[3], steps=2)
    assert seen_fps and all(set(f) == {24.0} for f in seen_fps)
    with pytest.warns(UserWarning, match="outside the frame rates"):
        pipe(labels=[3], steps=1, fps=100)
    for bad, kind in ((0, ValueError), (float("nan"), ValueError), (True, TypeError), ("8", TypeError)):
        with pytest.raises(kind, match="fps"):
            pipe(labels=[3], steps=1, fps=bad)
    # the CLI: --fps is the condition and the file's rate; by default both are the data's rate
    for argv, rate in ((["--fps", "12"], 12.0), ([], 24.0)):
        seen_fps.clear()
        out = tmp_path / f"{rate:g}.mp4"
        assert main(["sample", str(run), "--label", "3", "--steps", "2", "--out", str(out), "--quiet", *argv]) == 0
        assert seen_fps and all(set(f) == {rate} for f in seen_fps)
        assert probe_video(out)["fps"] == rate
    assert main(["sample", str(run), "--label", "3", "--steps", "2", "--fps", "6", "--out-dir", str(tmp_path / "d"),
                 "--quiet"]) == 0
    row = json.loads((tmp_path / "d" / "manifest.jsonl").read_text())
    assert row["fps"] == 6.0 and probe_video(tmp_path / "d" / row["file"])["fps"] == 6.0
    capsys.readouterr()


def test_a_model_without_fps_keeps_fps_as_the_files_frame_rate(tmp_path, capsys):
    import moviola

    run = tmp_path / "latte"
    main(["train", "--run-dir", str(run), "--quiet", *_yaml(tmp_path)])
    pipe = moviola.load_pipeline(run, device="cpu")
    assert "fps" not in pipe.accepts and pipe.frame_rate() == 8.0 and pipe.frame_rate(5) == 5.0
    with pytest.raises(ValueError, match=r"fps=5.*not conditioned on the frame rate"):
        pipe(labels=[1], steps=1, fps=5)
    for argv, rate in ((["--fps", "5"], 5.0), ([], 8.0)):  # today's meaning: the written file's rate only
        out = tmp_path / f"{rate:g}.mp4"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # and no warning about it
            assert main(["sample", str(run), "--label", "1", "--steps", "2", "--out", str(out), "--quiet", *argv]) == 0
        assert probe_video(out)["fps"] == rate
    assert main(["sample", str(run), "--label", "1", "--steps", "1", "--fps", "0", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--fps must be a positive number" in capsys.readouterr().err


def _yaml(tmp_path) -> list[str]:
    path = tmp_path / "latte.yaml"
    path.write_text("model: {size: tiny, patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}\n"
                    "conditions: {num_classes: 48}\ndata: {size: 32, frames: 4, count: 4}\n"
                    "train: {steps: 1, batch_size: 2, checkpoint_every: 1, device: cpu, precision: fp32}\n"
                    "sample: {steps: 2}\n")
    return [str(path)]
