"""The papers' datasets in their own layouts: UCF-101's class folders and split lists, folders of frames
(SkyTimelapse, Taichi-HD, FaceForensics), and caption manifests (Open-Sora CSV, WebVid CSV, JSONL)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moviola.config import ConfigError
from moviola.config.run import DataConfig
from moviola.data import build_dataset
from moviola.data.folders import UCF101, FrameFolder, ImageFolder, VideoFolder, readable_class
from moviola.eval.shapes_eval import read_folder
from moviola.video import save_video

CLASSES = ["BabyCrawling", "ApplyEyeMakeup", "YoYo"]  # classInd order on purpose not alphabetical


def gray_video(path: Path, level: int, frames: int = 4) -> Path:
    """A constant gray video; any suffix (an .avi holds mp4 content: PyAV reads the container, not the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = save_video(np.full((frames, 16, 16, 3), level, np.uint8), path.with_suffix(".mp4"))
    return written.rename(path) if written != path else path


def level_of(video) -> float:
    """The mean gray level (0..255) of an item's video in [-1, 1]."""
    return float((video.float().mean() + 1) / 2 * 255)


def write_ucf(tmp_path: Path) -> Path:
    """UCF-101 as distributed: UCF-101/<Class>/v_<Class>_gXX_cYY.avi beside ucfTrainTestlist/."""
    root = tmp_path / "UCF-101"
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    for c in CLASSES:
        for g in (1, 2, 3):
            gray_video(root / c / f"v_{c}_g0{g}_c01.avi", 40 * g)
    (lists / "classInd.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CLASSES, 1)))
    train = [f"{c}/v_{c}_g0{g}_c01.avi {k}" for k, c in enumerate(CLASSES, 1) for g in (1, 2)]
    train.append("YoYo/v_YoYo_g09_c01.avi 3")  # listed, not on disk: skipped as missing_file
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the official files have CRLF
    (lists / "testlist01.txt").write_text("".join(f"{c}/v_{c}_g03_c01.avi\n" for c in CLASSES))
    (lists / "trainlist02.txt").write_text("".join(f"{c}/v_{c}_g03_c01.avi {k}\n" for k, c in enumerate(CLASSES, 1)))
    return root


def test_readable_class_names():
    assert readable_class("ApplyEyeMakeup") == "apply eye makeup"
    assert readable_class("YoYo") == "yo yo"
    assert readable_class("PlayingDaf") == "playing daf"


def test_ucf101_labels_from_classind_and_split_membership(tmp_path):
    root = write_ucf(tmp_path)
    train = UCF101(root, split="train", fold=1, frames=2, size=16)
    names = {f.relative_to(root).as_posix() for f in train.files}
    assert names == {f"{c}/v_{c}_g0{g}_c01.avi" for c in CLASSES for g in (1, 2)}
    assert train.skipped["missing_file"] == 1 and "YoYo/v_YoYo_g09_c01.avi" in train.skipped_files
    assert train.classes == CLASSES
    for i, f in enumerate(train.files):
        item = train[i]
        cls = f.parent.name
        assert int(item["label"]) == CLASSES.index(cls)  # classInd's number - 1, not the folder's sorted place
        assert item["caption"] == readable_class(cls)
        assert tuple(item["video"].shape) == (3, 2, 16, 16)
    by_name = {f.parent.name: train[i] for i, f in enumerate(train.files)}
    assert by_name["ApplyEyeMakeup"]["caption"] == "apply eye makeup" and int(by_name["ApplyEyeMakeup"]["label"]) == 1

    test = UCF101(root, split="test", fold=1, frames=2, size=16)
    assert {f.name for f in test.files} == {f"v_{c}_g03_c01.avi" for c in CLASSES}
    assert not {f.name for f in test.files} & {f.name for f in train.files}
    assert [int(test[i]["label"]) for i in range(len(test))] == [CLASSES.index(f.parent.name) for f in test.files]

    fold2 = UCF101(root, split="train", fold=2, frames=2, size=16)
    assert {f.name for f in fold2.files} == {f.name for f in test.files}
    with pytest.raises(ValueError, match="testlist03.txt"):
        UCF101(root, split="test", fold=3, frames=2, size=16)


def test_ucf101_through_the_config(tmp_path):
    root = write_ucf(tmp_path)
    base = DataConfig(dataset="ucf101", root=str(root), frames=2, size=16)
    assert len(build_dataset(base)) == 6
    assert len(build_dataset(dataclasses.replace(base, split="test"))) == 3
    assert len(build_dataset(dataclasses.replace(base, ucf_split=2))) == 3
    chosen = build_dataset(dataclasses.replace(base, split_file="../ucfTrainTestlist/testlist01.txt"))
    assert {f.name for f in chosen.files} == {f"v_{c}_g03_c01.avi" for c in CLASSES}
    with pytest.raises(ConfigError, match="data.split"):
        build_dataset(DataConfig(dataset="folder", root=str(root), split="test"))
    with pytest.raises(ConfigError, match="ucf_split"):
        build_dataset(dataclasses.replace(base, ucf_split=4))


def write_frames(folder: Path, count: int, suffix: str = ".png", step: int = 20) -> None:
    """Frames 1..count named without zero padding (10.png sorts before 2.png as text), frame k at gray 10 + step*k."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(1, count + 1):
        Image.fromarray(np.full((16, 16, 3), 10 + step * k, np.uint8)).save(folder / f"{k}{suffix}")


def test_frame_folders_natural_order_stride_nesting_and_bad_folders(tmp_path):
    root = tmp_path / "taichi"
    write_frames(root / "video_0001", 11)
    write_frames(root / "video_0002", 2)  # too short for 3 frames at stride 2
    write_frames(root / "video_0003", 5)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "video_0003" / "3.png")  # frame of another size
    ds = FrameFolder(root, frames=3, stride=2, size=16)
    assert [f.name for f in ds.files] == ["video_0001", "video_0003"]
    assert ds.skipped["too_short"] == 1 and ds.skipped_files == {"video_0002": "too_short"}
    levels = [round(level_of(ds[0]["video"][:, t])) for t in range(3)]
    assert levels == [30, 70, 110]  # frames 1, 3, 5 in natural order (as text: 1, 11, 3)
    assert ds.exact(1) is None and ds.skipped["unreadable"] == 1

    sky = tmp_path / "sky_timelapse"  # SkyTimelapse: sky_train/<id>/<clip>/*.jpg
    write_frames(sky / "sky_train" / "07U1fSrk9oI" / "07U1fSrk9oI_1", 12, ".jpg", step=18)
    write_frames(sky / "sky_train" / "07U1fSrk9oI" / "07U1fSrk9oI_2", 4, ".jpg")
    ds = FrameFolder(sky, frames=4, size=16)
    assert [ds._name(f) for f in ds.files] == ["sky_train/07U1fSrk9oI/07U1fSrk9oI_1", "sky_train/07U1fSrk9oI/07U1fSrk9oI_2"]
    got = [level_of(ds[0]["video"][:, t]) for t in range(4)]
    assert np.allclose(got, [28, 46, 64, 82], atol=4)  # jpg: near the levels, in order 1, 2, 3, 4


def test_frame_folders_through_the_config_with_random_start(tmp_path):
    root = tmp_path / "ffs"
    for v in range(3):
        write_frames(root / f"{v:03d}", 10, step=10)
    (root / "captions.jsonl").write_text("".join(json.dumps({"path": f"{v:03d}", "text": f"face {v}"}) + "\n"
                                                 for v in range(3)))
    cfg = DataConfig(dataset="frames", root=str(root), frames=2, size=16, clip_start="random", seed=3)
    ds = build_dataset(cfg)
    again = build_dataset(cfg)
    assert isinstance(ds, FrameFolder) and len(ds) == 3
    assert [ds[i]["caption"] for i in range(3)] == ["face 0", "face 1", "face 2"]  # path/text keys in captions.jsonl
    first = [level_of(ds[i]["video"][:, 0]) for i in range(3)]
    assert first == [level_of(again[i]["video"][:, 0]) for i in range(3)]  # the seeded start, the same each build


def test_open_sora_csv_resolves_relative_to_the_manifest_and_skips_bad_rows(tmp_path):
    root = tmp_path / "set"
    a = gray_video(root / "clips" / "a.mp4", 60)
    gray_video(root / "clips" / "b.mp4", 200)
    gray_video(root / "clips" / "c.mp4", 120)
    meta = root / "meta"
    meta.mkdir()
    (meta / "train.csv").write_text(
        "path,text\n"
        "../clips/b.mp4,\"a dog, running\"\n"  # relative to meta/, not to root
        f"{a},a cat\n"  # absolute
        "../clips/gone.mp4,a missing file\n"
        "../clips/c.mp4,\n"  # no caption
    )
    ds = VideoFolder(root, frames=2, size=16, manifest="meta/train.csv")
    assert [ds._name(f) for f in ds.files] == ["clips/b.mp4", "clips/a.mp4"]  # manifest order; c has no caption
    assert [ds[i]["caption"] for i in range(2)] == ["a dog, running", "a cat"]
    assert level_of(ds[0]["video"]) == pytest.approx(200, abs=8) and level_of(ds[1]["video"]) == pytest.approx(60, abs=8)
    assert ds.skipped["missing_file"] == 1 and ds.skipped["no_caption"] == 1
    assert ds.skipped_files == {"clips/gone.mp4": "missing_file", "clips/c.mp4": "no_caption"}

    cfg = DataConfig(dataset="folder", root=str(root), frames=2, size=16, captions="meta/train.csv")
    assert [build_dataset(cfg)[i]["caption"] for i in range(2)] == ["a dog, running", "a cat"]


def test_webvid_csv(tmp_path):
    root = tmp_path / "webvid"
    gray_video(root / "videos" / "000001_000050" / "1066692580.mp4", 90)
    gray_video(root / "videos" / "000051_000100" / "21179416.mp4", 170)
    (root / "videos" / "results_2M_val.csv").write_text(
        "videoid,contentUrl,duration,page_dir,name\n"
        "21179416,https://x/21179416.mp4,PT00H00M11S,000051_000100,Aerial shot of winter forest\n"
        "1066692580,https://x/1066692580.mp4,PT00H00M27S,000001_000050,Fresh tomatoes\n"
        "999,https://x/999.mp4,PT00H00M05S,000001_000050,Not downloaded\n"
        "1066692580,https://x/1066692580.mp4,PT00H00M27S,000001_000050,\n")  # a repeat without a caption
    ds = VideoFolder(root, frames=2, size=16, manifest="videos/results_2M_val.csv")
    assert [ds._name(f) for f in ds.files] == ["videos/000051_000100/21179416.mp4", "videos/000001_000050/1066692580.mp4"]
    assert [ds[i]["caption"] for i in range(2)] == ["Aerial shot of winter forest", "Fresh tomatoes"]
    assert level_of(ds[0]["video"]) == pytest.approx(170, abs=8)
    assert ds.skipped["missing_file"] == 1 and ds.skipped["no_caption"] == 1


def test_jsonl_manifests_path_or_file_caption_or_text(tmp_path):
    root = tmp_path / "j"
    for name, level in (("x.mp4", 30), ("sub/y.mp4", 130), ("z.mp4", 230)):
        gray_video(root / name, level)
    lines = [json.dumps({"path": "x.mp4", "text": "ex"}), "not json",
             json.dumps({"file": "sub/y.mp4", "caption": "why", "label": 2}),
             json.dumps({"path": "z.mp4"}),  # no caption
             json.dumps({"caption": "no file"}), json.dumps({"path": "none.mp4", "text": "gone"})]
    (root / "list.jsonl").write_text("\n".join(lines) + "\n")
    ds = VideoFolder(root, frames=2, size=16, manifest="list.jsonl")
    assert [(ds[i]["caption"], int(ds[i]["label"])) for i in range(len(ds))] == [("ex", -1), ("why", 2)]
    assert dict(ds.skipped) == {"bad_caption_line": 2, "no_caption": 1, "missing_file": 1}

    imgs = tmp_path / "imgs"  # an image folder takes the same manifests
    imgs.mkdir()
    Image.fromarray(np.full((16, 16, 3), 99, np.uint8)).save(imgs / "p.png")
    (imgs / "m.csv").write_text("path,text\np.png,a picture\nq.png,missing\n")
    ids = ImageFolder(imgs, size=16, manifest="m.csv")
    assert len(ids) == 1 and ids[0]["caption"] == "a picture" and ids.skipped["missing_file"] == 1


def test_eval_shapes_reads_a_captioned_folder(tmp_path):
    folder = tmp_path / "gen"
    gray_video(folder / "a.mp4", 50)
    gray_video(folder / "b.mp4", 150)
    (folder / "captions.jsonl").write_text(json.dumps({"file": "a.mp4", "caption": "a red circle moving right"}) + "\n"
                                           + json.dumps({"path": "b.mp4", "text": "A blue Square moving up"}) + "\n")
    videos, targets = read_folder(folder)
    assert len(videos) == 2 and videos[0].shape[1:] == (16, 16, 3)
    assert targets == [{"colour": "red", "shape": "circle", "direction": "right"},
                       {"colour": "blue", "shape": "square", "direction": "up"}]

    (folder / "captions.jsonl").unlink()
    (folder / "out").mkdir()
    (folder / "out" / "prompts.csv").write_text("path,text\n../b.mp4,a green triangle moving left\n")
    videos, targets = read_folder(folder / "out" / "prompts.csv")  # a manifest given as the file
    assert targets == [{"colour": "green", "shape": "triangle", "direction": "left"}]
    assert abs(float(videos[0].mean()) - 150) < 8  # ../b.mp4 from out/, i.e. folder/b.mp4

    (folder / "captions.csv").write_text("path,text\nb.mp4,a cat on a sofa\n")
    with pytest.raises(ValueError, match="line 2"):
        read_folder(folder)
