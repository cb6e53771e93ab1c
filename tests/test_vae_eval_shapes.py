"""eval-vae on Moving Shapes clips also scores the reconstructions by the Moving Shapes rules."""
from __future__ import annotations

import torch

from moviola.data.shapes import MovingShapes
from moviola.eval.shapes_score import score_batch
from moviola.eval.vae_eval import evaluate_autoencoder


def test_reconstructions_are_scored_as_the_scorer_scores_them():
    out = evaluate_autoencoder("identity", shapes=6, frames=9, size=32)  # exact reconstructions
    data = MovingShapes(split="test", count=6, size=32, frames=9)
    want = score_batch(torch.stack([data[i]["video"] for i in range(6)]), [data[i]["label"] for i in range(6)])
    assert out["shapes_score"]["shape_acc"] == want["shape_acc"] and out["shapes_score"]["n"] == 6
    assert out["shapes_score"]["match_rate"] == want["match_rate"] == 1.0  # clean clips score perfectly


def test_a_folder_is_not_scored(tmp_path):
    from moviola.video import save_video

    save_video(torch.zeros(3, 9, 32, 32), tmp_path / "a.mp4")
    assert "shapes_score" not in evaluate_autoencoder("identity", videos=tmp_path, frames=9, size=32)
