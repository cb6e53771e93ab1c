"""The shipped class-conditional pixel-space demo (checkpoints/shapes-latte-tiny) does what its README says.

It is undertrained (5,519 steps): it draws one object of the asked-for colour, but its shapes are
right only two times in three and its motion is not learned yet, so colour, shape and a single
connected object are pinned here, not direction (the 1,544-step export it replaced drew fragments:
one connected object in 2 % of frames here, no shape right).
"""
from __future__ import annotations

from pathlib import Path

import moviola
from moviola.eval.shapes_score import score_batch

CKPT = Path(__file__).resolve().parents[1] / "checkpoints" / "shapes-latte-tiny"
LABELS = [0, 13, 27, 39]  # one circle per colour, all seen in training (26, blue circle up, is a hold-out)


def test_shipped_class_model_draws_one_object_of_the_asked_colour(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipe = moviola.load_pipeline(CKPT, device="cpu")
    video = pipe(labels=LABELS, steps=25, cfg=4.0, seed=0)
    assert video.shape == (4, 3, 16, 32, 32)
    s = score_batch(video, LABELS)
    assert s["colour_acc"] == 1.0, s["rows"]
    assert s["shape_acc"] >= 0.75, s["rows"]  # seed 0 gets 4 of 4; the 1,544-step export got 0
    assert s["connected_fraction_mean"] >= 0.5, s["rows"]
