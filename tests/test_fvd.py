"""FVD: the I3D network and its checked loading, the StyleGAN-V clip protocol, the content-keyed cache.

No detector weights can be downloaded here, so the whole pipeline runs with a randomly
initialized I3D at a small input size, and its numbers are checked against an independent
computation (features by hand, the distance by scipy.linalg.sqrtm)."""
from __future__ import annotations

import json
import math
import pickle
import shutil

import numpy as np
import pytest
import scipy.linalg
import torch

from moviola.cli import main
from moviola.eval.fvd import NotEnoughVideos, fvd, list_videos
from moviola.eval.i3d import ChecksumError, InceptionI3d, _same_pad, file_sha256, load_detector
from moviola.io.checkpoint import CheckpointError
from moviola.video import read_video, save_video


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    net = InceptionI3d(400)
    with torch.no_grad():  # random but non-trivial batch-norm statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("i3d") / "i3d_random.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def detector(i3d_file):
    return load_detector(i3d_file, resize=32)


def _write_videos(folder, n, frames, seed=0, shift=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 200, size=(1, 32, 32, 3))
        motion = np.arange(frames)[:, None, None, None] * rng.integers(1, 4)
        video = np.clip(base + motion + shift, 0, 255).astype(np.uint8)  # (T, H, W, 3)
        save_video(torch.from_numpy(video).permute(3, 0, 1, 2).float() / 127.5 - 1, folder / f"{i:04d}.mp4")
    return folder


def test_same_padding_is_tensorflows():
    """TF "SAME": output size ceil(n / stride), padding split with the extra pixel at the back."""
    for n in range(1, 40):
        for k in (1, 2, 3, 7):
            for s in (1, 2):
                front, back = _same_pad(n, k, s)
                assert (n + front + back - k) // s + 1 == math.ceil(n / s)
                assert back - front in (0, 1)


def test_i3d_has_the_standard_layout():
    net = InceptionI3d(400)
    sd = net.state_dict()
    assert sd["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert sd["Mixed_3b.b1b.conv3d.weight"].shape == (128, 96, 3, 3, 3)
    assert sd["Mixed_5c.b3b.conv3d.weight"].shape == (128, 832, 1, 1, 1)
    assert sd["logits.conv3d.bias"].shape == (400,)
    assert "Mixed_4f.b2a.bn.running_var" in sd
    n = sum(p.numel() for p in net.parameters())
    assert 12.68e6 < n < 12.71e6  # the tf I3D (Kinetics-400, RGB) has 12.69 M parameters (OpenVINO's i3d-rgb-tf card)
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 16, 224, 224))
    assert out.shape == (1, 400)


def test_detector_loading_checks(i3d_file, tmp_path):
    good = file_sha256(i3d_file)
    assert load_detector(i3d_file, sha256=good).sha256 == good
    with pytest.raises(ChecksumError, match=f"not the expected {'0' * 64}"):
        load_detector(i3d_file, sha256="0" * 64)
    pinned = tmp_path / "i3d_torchscript.pt"  # the known file name with other bytes: refused
    shutil.copy(i3d_file, pinned)
    with pytest.raises(ChecksumError, match="bec6519f.*dropbox"):
        load_detector(pinned)
    html = tmp_path / "page.pt"
    html.write_text("<!DOCTYPE html><html><body>Dropbox</body></html>")
    with pytest.raises(ValueError, match="HTML page"):
        load_detector(html)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        load_detector(tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_a_pickled_payload_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"logits.conv3d.weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_detector(bad)
    assert not (tmp_path / "PWNED").exists()


def test_a_torchscript_detector_gets_the_stylegan_v_arguments(tmp_path):
    class Fake(torch.nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                    return_features: bool = False) -> torch.Tensor:
            assert rescale and resize and return_features
            return x.float().mean(dim=(2, 3, 4))

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Fake()), str(path))
    det = load_detector(path)
    assert det.kind == "torchscript"
    x = torch.randint(0, 255, (2, 3, 4, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(det(x), x.double().mean(dim=(2, 3, 4)))
    with pytest.raises(ValueError, match="uint8"):
        det(x.float() / 255)


def _reference_fvd(real_clips, fake_clips, det):
    """Features by hand, biased covariances, scipy.linalg.sqrtm: StyleGAN-V's formula."""
    def feats(clips):
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous()
        return det(x).numpy()
    a, b = feats(real_clips), feats(fake_clips)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_fvd_matches_an_independent_computation_and_grows_with_a_shift(tmp_path, detector):
    real = _write_videos(tmp_path / "real", 12, 20, seed=1)
    fake = _write_videos(tmp_path / "fake", 12, 16, seed=2)
    out = fvd(real, fake, detector, clips=12, frames=16, seed=3, cache_dir=tmp_path / "cache")
    # the protocol by hand: real clips at seeded random offsets, generated clips from frame 0
    real_clips = []
    for i, p in enumerate(sorted(real.glob("*.mp4"))):
        v = read_video(p)
        start = int(np.random.default_rng([3, i]).integers(0, v.shape[0] - 16 + 1))
        real_clips.append(v[start:start + 16])
    fake_clips = [read_video(p)[:16] for p in sorted(fake.glob("*.mp4"))]
    assert out["fvd"] == pytest.approx(_reference_fvd(real_clips, fake_clips, detector), rel=1e-6)
    assert out["detector_sha256"] == detector.sha256 and out["clips"] == 12

    same = fvd(fake, fake, detector, clips=12, cache_dir=tmp_path / "cache")["fvd"]
    assert abs(same) < 1e-6 * out["fvd"]
    shifts = [fvd(fake, _write_videos(tmp_path / f"shift{s}", 12, 16, seed=2, shift=s), detector, clips=12,
                  cache_dir=tmp_path / "cache")["fvd"] for s in (10, 40)]
    assert 0 < shifts[0] < shifts[1]


def test_short_and_broken_videos_are_skipped_and_counted_and_too_few_is_an_error(tmp_path, detector):
    folder = _write_videos(tmp_path / "v", 4, 16)
    _write_videos(tmp_path / "short", 2, 8)
    for i, p in enumerate(sorted((tmp_path / "short").glob("*.mp4"))):
        shutil.copy(p, folder / f"0001s{i}.mp4")  # sorted between the good ones
    (folder / "0002b.mp4").write_bytes(b"\x00" * 100)
    out = fvd(folder, folder, detector, clips=4, cache_dir=tmp_path / "c")
    assert out["real_skipped"] == {"shorter than 16 frames": 2, "unreadable": 1}
    with pytest.raises(NotEnoughVideos, match=r"found 4 usable videos \(.*2 shorter than 16 frames.*\) of 7 files"):
        fvd(folder, folder, detector, clips=5, cache_dir=tmp_path / "c")


def test_the_real_stats_cache_is_keyed_by_content(tmp_path, detector):
    real = _write_videos(tmp_path / "real", 4, 18)
    fake = _write_videos(tmp_path / "fake", 4, 16, seed=5)
    cache = tmp_path / "cache"
    first = fvd(real, fake, detector, clips=4, cache_dir=cache)
    again = fvd(real, fake, detector, clips=4, cache_dir=cache)
    assert (first["real_cache"], again["real_cache"]) == ("miss", "hit") and again["fvd"] == first["fvd"]
    moved = tmp_path / "moved"
    shutil.copytree(real, moved)
    assert fvd(moved, fake, detector, clips=4, cache_dir=cache)["real_cache"] == "hit"  # same bytes elsewhere
    _write_videos(moved, 1, 18, seed=9)  # 0000.mp4 rewritten with other content, same name
    changed = fvd(moved, fake, detector, clips=4, cache_dir=cache)
    assert changed["real_cache"] == "miss" and changed["fvd"] != first["fvd"]
    assert fvd(real, fake, detector, clips=4, seed=1, cache_dir=cache)["real_cache"] == "miss"  # other offsets


def test_generated_folders_are_read_in_manifest_order(tmp_path):
    folder = _write_videos(tmp_path / "gen", 3, 16)
    (folder / "manifest.jsonl").write_text("".join(json.dumps({"file": f"{i:04d}.mp4"}) + "\n" for i in (2, 0, 1)))
    assert [p.name for p in list_videos(folder)] == ["0002.mp4", "0000.mp4", "0001.mp4"]


def test_cli_fvd(tmp_path, i3d_file, capsys, monkeypatch):
    monkeypatch.setenv("MOVIOLA_CACHE", str(tmp_path / "cache"))
    real = _write_videos(tmp_path / "real", 3, 16)
    args = ["eval", "fvd", "--real", str(real), "--fake", str(real), "--detector", str(i3d_file)]
    assert main([*args, "--clips", "4"]) == 2
    assert "found 3 usable videos" in capsys.readouterr().err
    assert main([*args, "--clips", "3", "--detector-sha256", "ab" * 32]) == 2
    assert "not the expected" in capsys.readouterr().err


def test_resolution_resize_keeps_pixel_values():
    """--resolution resizes uint8 frames without clipping them to [-1, 1] (a flat clip stays flat)."""
    from moviola.eval.fvd import _crop_resize

    clip = np.full((3, 40, 60, 3), 200, dtype=np.uint8)
    clip[:, :, :, 1] = 17
    out = _crop_resize(clip, 32)
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1] == 17).all()
