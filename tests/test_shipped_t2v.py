"""The shipped text-to-video model (checkpoints/shapes-latte-t2v) does what the README says, from any directory."""
from __future__ import annotations

from pathlib import Path

import moviola
from moviola.data.shapes import MovingShapes, class_label, parse_caption
from moviola.eval.shapes_eval import psnr
from moviola.eval.shapes_score import score_batch

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-latte-t2v"
DEMO = ["a red circle moving down", "a green square moving right", "a blue triangle moving up",
        "a yellow triangle moving right"]  # the Makefile's demo prompts; the last is a hold-out combination


def test_shipped_model_draws_the_demo_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the VAE is found relative to the checkpoint, not the working directory
    pipe = moviola.load_pipeline(CKPT, device="cpu")
    video = pipe(prompt=DEMO, steps=50, cfg=4.0, seed=0)
    assert video.shape == (4, 3, 17, 32, 32)
    rows = score_batch(video, [class_label(*parse_caption(p)) for p in DEMO])["rows"]
    assert all(r["colour_ok"] and r["direction_ok"] for r in rows), rows
    assert sum(r["match"] for r in rows) >= 3, rows  # seed 0: the blue triangle's rounded corners read as a circle


def test_shipped_model_continues_a_given_first_frame(tmp_path):
    pipe = moviola.load_pipeline(CKPT, device="cpu")
    clips = MovingShapes("test", count=4, size=32, frames=17, seed=0)
    items = [clips[i] for i in range(4)]
    first = [it["video"][:, 0] for it in items]  # (3, 32, 32) in [-1, 1]
    video = pipe(prompt=[it["caption"] for it in items], image=first, steps=50, cfg=4.0, seed=0)
    for given, out in zip(first, video):
        assert psnr(out[:, 0], given) >= 25.0
    rows = score_batch(video, [it["label"] for it in items])["rows"]
    assert sum(r["colour_ok"] and r["shape_ok"] for r in rows) >= 3, rows
    assert all(r["direction_ok"] for r in rows), rows
