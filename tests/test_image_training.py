"""``data.dataset: images``: a folder of images trains as one-frame videos, from the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import moviola
from moviola.cli import main
from moviola.config import ConfigError, load_config


def test_an_image_folder_trains_and_samples_as_one_frame_videos(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    config = tmp_path / "images.yaml"
    config.write_text(f"data: {{dataset: images, root: {images}, frames: 1, size: 32}}\n"
                      "model: {patch_size: 8, hidden_size: 32, depth: 2, num_heads: 2}\n"
                      "train: {steps: 3, batch_size: 2, device: cpu}\n")
    code = main(["train", str(config), "--run-dir", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("data_skipped") == {"unreadable": 1} for r in rows)  # the broken file, counted
    video = moviola.load_pipeline(run, device="cpu")(num_videos=1, steps=2, seed=0)
    assert video.shape == (1, 3, 1, 32, 32)


def test_images_need_one_frame():
    with pytest.raises(ConfigError, match="data.frames=1"):
        load_config(overrides=["data.dataset=images", "data.root=x"])
