"""FID / IS with the FID Inception: layout of pytorch-fid's weights, safe loading, and the numbers.

The real weights are not available here, so the network runs with random weights (He-scaled,
so activations keep a useful range through 94 layers) at 75x75 input, and every number is
checked against an independent computation of the same quantity.
"""
from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from moviola.eval.frechet import FeatureStats
from moviola.eval.image_metrics import (fid_from_stats, frames_from_files, frames_from_videos,
                                        inception_features, inception_score, to_uint8_frames)
from moviola.eval.inception import (FID_WEIGHTS_FILENAME, FID_WEIGHTS_SHA256, FID_WEIGHTS_URL,
                                    FIDInceptionV3, file_sha256, load_inception)


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    """Random weights, no resize (75x75 input, the smallest the network takes)."""
    torch.manual_seed(0)
    model = FIDInceptionV3(resize_input=False)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        model.fc.weight.normal_(0, 0.05)
        model.fc.bias.normal_(0, 1.0)
    return model


@pytest.fixture(scope="module")
def weights_file(net, tmp_path_factory):
    """The random model saved like a file from the torch 1.x era: a flat state dict in the legacy
    (non-zip) format, without the num_batches_tracked counters that older files lack."""
    path = tmp_path_factory.mktemp("weights") / FID_WEIGHTS_FILENAME
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def _images(n: int, seed: int, size: int = 75) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _direct_features(net, images):
    with torch.no_grad():
        pool3, logits = net(images)
    return pool3.double().numpy(), logits.double().numpy()


def _fid_sqrtm(x1: np.ndarray, x2: np.ndarray) -> float:
    """The textbook formula as pytorch-fid writes it: np.cov and scipy.linalg.sqrtm of S1 @ S2."""
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _fid_small_n(x1: np.ndarray, x2: np.ndarray) -> float:
    """Exact FID for few samples in many dimensions, without any D x D matrix function:
    the eigenvalues of S1 S2 are the squared singular values of X1c X2c^T / sqrt((n1-1)(n2-1))."""
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    n1, n2 = len(x1), len(x2)
    tr_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    d = x1.mean(0) - x2.mean(0)
    return float(d @ d + (c1 ** 2).sum() / (n1 - 1) + (c2 ** 2).sum() / (n2 - 1) - 2 * tr_sqrt)


def _is_naive(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """Inception Score one sample at a time, the way the definition reads."""
    probs = []
    for row in logits:
        e = np.exp(row - row.max())
        probs.append(e / e.sum())
    probs = np.array(probs)
    n, scores = len(probs), []
    for i in range(splits):
        part = probs[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(axis=0)
        kls = [float(np.sum(p * np.log(p / marginal))) for p in part]
        scores.append(np.exp(np.mean(kls)))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- the network


def test_state_dict_has_pytorch_fid_keys_shapes_and_size():
    sd = FIDInceptionV3().state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_1a_3x3.bn.running_var": (32,),
        "Conv2d_4a_3x3.bn.bias": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.running_mean": (192,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in sd)
    convs = [k for k in sd if k.endswith(".conv.weight")]
    assert len(convs) == 94  # stem 5 + A 3x7 + B 4 + C 4x10 + D 6 + E 2x9
    assert len(sd) == 94 * 6 + 2  # conv.weight + 5 bn entries per layer, fc weight and bias
    # torchvision documents 27,161,264 parameters for Inception3 with the aux classifier and
    # 1000 classes; the FID network has no aux head (conv0 768*128 + bn 2*128, conv1 128*768*25
    # + bn 2*768, fc 768*1000 + 1000) and 8 more classes of the 2048-wide fc
    aux = 768 * 128 + 2 * 128 + 128 * 768 * 25 + 2 * 768 + 768 * 1000 + 1000
    expected_params = 27_161_264 - aux + 8 * (2048 + 1)
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == expected_params == 23_850_960


def test_tf_pooling_variants():
    net = FIDInceptionV3()
    assert net.Mixed_7b.pool == "avg" and net.Mixed_7c.pool == "max"
    # TF's avg_pool ignores the zero padding: a constant map stays constant up to the border
    from moviola.eval.inception import _tf_avg_pool
    assert torch.equal(_tf_avg_pool(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))


def test_preprocess_scaling_and_resize():
    net = FIDInceptionV3()
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    y = net.preprocess(x)
    assert y.shape == (1, 3, 299, 299)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]), atol=1e-6)
    small = _images(2, seed=1, size=40)
    ref = F.interpolate(small.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.allclose(net.preprocess(small), ref, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        net.preprocess(small.float() / 127.5 - 1)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net.preprocess(small.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="at least 75"):
        FIDInceptionV3(resize_input=False)(small)


def test_forward_outputs_and_batch_invariance(net):
    images = _images(3, seed=2)
    pool3, logits = net(images)
    assert pool3.shape == (3, 2048) and logits.shape == (3, 1008)
    assert pool3.abs().max() > 1e-3  # the random network still says something
    assert torch.allclose(logits, pool3 @ net.fc.weight.T, atol=1e-5)  # IS logits: no bias
    assert torch.allclose(net.class_logits(pool3, bias=True), logits + net.fc.bias, atol=1e-5)
    one_by_one = torch.cat([net(images[i:i + 1])[0] for i in range(3)])
    assert torch.allclose(one_by_one, pool3, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- FID


def test_inception_features_stream_matches_direct_statistics(net):
    images = _images(6, seed=3)
    chunks = [images[:1], images[1:4], images[4:]]  # uneven chunks, regrouped into batches of 4
    stats, logits = inception_features(iter(chunks), net, batch_size=4, keep_logits=True)
    feats, direct_logits = _direct_features(net, images)
    assert stats.count == 6 and stats.meta["detector"].startswith("inception-2015-12-05")
    np.testing.assert_allclose(stats.mean, feats.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.cov, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(logits.numpy(), direct_logits, rtol=1e-4, atol=1e-5)


def test_fid_of_network_features_vs_independent_formula(net):
    a, b = _images(7, seed=4), _images(5, seed=5)
    fid_ab = fid_from_stats(inception_features(a, net, batch_size=4), inception_features(b, net, batch_size=4))
    fa, fb = _direct_features(net, a)[0], _direct_features(net, b)[0]
    ref = _fid_small_n(fa, fb)
    assert ref > 0
    assert fid_ab == pytest.approx(ref, rel=1e-5)


def test_fid_vs_scipy_sqrtm_and_shift():
    rng = np.random.default_rng(0)
    d = 24
    x1 = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) * 0.3
    x2 = rng.normal(size=(250, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.2
    s1, s2 = FeatureStats().update(x1[:100]).update(x1[100:]), FeatureStats().update(x2)
    assert fid_from_stats(s1, s2) == pytest.approx(_fid_sqrtm(x1, x2), rel=1e-7)
    assert fid_from_stats(s1, s1) == pytest.approx(0.0, abs=1e-9 * np.trace(s1.cov))
    # a pure shift leaves the covariance alone, so FID is exactly the squared shift
    direction = rng.normal(size=d)
    fids = [fid_from_stats(s1, FeatureStats().update(x1 + k * direction)) for k in (0.5, 1.0, 2.0)]
    np.testing.assert_allclose(fids, [k * k * direction @ direction for k in (0.5, 1.0, 2.0)], rtol=1e-7)


def test_fid_refuses_stats_from_different_detectors(net):
    a = inception_features(_images(3, seed=6), net)
    b = FeatureStats(meta=dict(a.meta, weights_sha256="0" * 64)).update(np.random.default_rng(0).normal(size=(3, 2048)))
    with pytest.raises(ValueError, match="weights_sha256"):
        fid_from_stats(a, b)
    with pytest.raises(ValueError, match="another detector"):
        inception_features(_images(2, seed=6), net, stats=b)


def test_inception_features_input_errors(net):
    with pytest.raises(ValueError, match="no images"):
        inception_features([], net)
    with pytest.raises(ValueError, match="uint8"):
        inception_features(torch.zeros(2, 3, 75, 75), net)
    trained = copy.deepcopy(net).train()
    with pytest.raises(ValueError, match="training mode"):
        inception_features(_images(2, seed=7), trained)


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_vs_naive_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(53, 1008))  # 53 rows: splits of 10 and 11
    mean, std = inception_score(torch.from_numpy(logits).float(), splits=5)
    ref_mean, ref_std = _is_naive(logits.astype(np.float32).astype(np.float64), splits=5)
    assert (mean, std) == (pytest.approx(ref_mean, rel=1e-9), pytest.approx(ref_std, rel=1e-7))
    # torch-fidelity's order: a RandomState(2020) permutation first
    shuffled = logits[np.random.RandomState(2020).permutation(53)]
    assert inception_score(logits, splits=5, shuffle_seed=2020)[0] == pytest.approx(_is_naive(shuffled, 5)[0], rel=1e-9)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert inception_score(probs, splits=5, probs=True)[0] == pytest.approx(inception_score(logits, splits=5)[0], rel=1e-9)


def test_inception_score_limits_and_errors():
    same = np.tile(np.random.default_rng(2).normal(size=(1, 10)), (40, 1))
    assert inception_score(same, splits=4) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    one_hot = np.eye(8)[np.arange(40) % 8]  # every split holds each of 8 classes equally, with certainty
    assert inception_score(one_hot, splits=5, probs=True) == (pytest.approx(8.0), pytest.approx(0.0, abs=1e-9))
    with pytest.raises(ValueError, match="cannot fill"):
        inception_score(same[:3], splits=4)
    with pytest.raises(ValueError, match="summing to 1"):
        inception_score(same, probs=True)


def test_inception_score_from_the_network(net):
    _, logits = inception_features(_images(6, seed=8), net, keep_logits=True)
    mean, std = inception_score(logits, splits=2)
    assert 1.0 <= mean <= 1008 and std >= 0


# ----------------------------------------------------------------------------- loading weights


def test_load_inception_round_trip(net, weights_file):
    digest = file_sha256(weights_file)
    images = _images(2, seed=9)
    for source in (weights_file, weights_file.parent):  # the file, or a directory holding it
        model = load_inception(source, sha256=digest[:8].upper(), resize_input=False)
        assert model.weights_sha256 == digest and not model.training
        assert not any(p.requires_grad for p in model.parameters())
        torch.testing.assert_close(model(images), net(images))


def test_wrong_checksum_is_refused(weights_file, tmp_path):
    with pytest.raises(ValueError) as err:  # a loadable file, but not the released one
        load_inception(weights_file)
    assert FID_WEIGHTS_SHA256 in str(err.value) and FID_WEIGHTS_URL in str(err.value)
    page = tmp_path / FID_WEIGHTS_FILENAME
    page.write_text("<!DOCTYPE html><html>rate limited</html>")
    with pytest.raises(ValueError, match="HTML page") as err:
        load_inception(page)
    assert FID_WEIGHTS_SHA256 in str(err.value)
    with pytest.raises(ValueError, match="expected 0123abcd"):
        load_inception(page, sha256="0123abcd")
    with pytest.raises(ValueError, match="hex digits"):
        load_inception(page, sha256="not-a-digest")


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_inception(tmp_path / "nowhere.pth")
    assert FID_WEIGHTS_URL in str(err.value) and FID_WEIGHTS_SHA256 in str(err.value)
    # torch.hub names a file after the first 8 hex digits of its SHA-256
    assert FID_WEIGHTS_SHA256.startswith("6726825d") and "-6726825d." in FID_WEIGHTS_FILENAME


class _Payload:
    """Unpickling this runs os.makedirs(target): proof that code ran."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.makedirs, (self.target,)


def test_malicious_pickle_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "payload-ran"
    legacy, zipped = tmp_path / "legacy.pth", tmp_path / "zipped.pth"
    legacy.write_bytes(pickle.dumps({"fc.weight": _Payload(str(marker))}, protocol=2))
    torch.save({"fc.weight": _Payload(str(marker))}, zipped)
    for path in (legacy, zipped):
        # the digest override gets the file past the checksum, so only weights_only stands in the way
        with pytest.raises(ValueError, match=r"weights_only=True.*os\.makedirs"):
            load_inception(path, sha256=file_sha256(path))
        assert not marker.exists()
    pickle.loads(legacy.read_bytes())  # the payload is real: plain unpickling runs it
    assert marker.exists()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_inception(garbage, sha256=file_sha256(garbage))


def test_a_different_network_is_refused(tmp_path):
    path = tmp_path / "torchvision_like.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048), "AuxLogits.fc.bias": torch.zeros(1000)}, path)
    with pytest.raises(ValueError, match="missing key.*unexpected key.*fc.weight: file \\(1000, 2048\\)"):
        load_inception(path, sha256=file_sha256(path))


# ----------------------------------------------------------------------------- video frames


def test_to_uint8_frames_matches_video_writer():
    from moviola.video import to_uint8

    videos = torch.rand(2, 3, 4, 8, 8) * 2.2 - 1.1  # a little decoder overshoot is clamped
    frames = to_uint8_frames(videos)
    assert frames.shape == (8, 3, 8, 8) and frames.dtype == torch.uint8
    written = torch.from_numpy(to_uint8(videos)).reshape(8, 8, 8, 3).permute(0, 3, 1, 2)  # (B*T, 3, H, W)
    assert torch.equal(frames, written)
    assert torch.equal(to_uint8_frames(videos, frame_stride=2), frames.view(2, 4, 3, 8, 8)[:, ::2].reshape(4, 3, 8, 8))
    assert torch.equal(to_uint8_frames(frames.view(2, 4, 3, 8, 8).transpose(1, 2)), frames)  # uint8 in
    grey = to_uint8_frames(videos[:, :1])
    assert torch.equal(grey[:, 0], grey[:, 2])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        to_uint8_frames(videos * 127.5 + 127.5)


def test_fid_over_video_frames_and_files(net, tmp_path):
    from PIL import Image

    from moviola.video import save_video

    model = copy.deepcopy(net)
    model.resize_input = True  # 16x16 frames are upsampled to 299, as real evaluation does
    g = torch.Generator().manual_seed(10)
    videos = torch.rand(2, 3, 2, 16, 16, generator=g) * 2 - 1
    save_video(videos[0], tmp_path / "clip.gif", fps=4)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(tmp_path / "still.png")
    from_files = list(frames_from_files(tmp_path))
    assert [f.shape for f in from_files] == [(2, 3, 16, 16), (1, 3, 16, 16)]  # sorted: clip.gif, still.png
    assert torch.equal(from_files[0], to_uint8_frames(videos[:1]))  # gif round trip is lossless here
    # streamed video by video in batches of 3, or as one batch: the same statistics
    # (FID of a set against itself is checked on cheaper features in test_fid_vs_scipy_sqrtm_and_shift)
    streamed = inception_features(frames_from_videos([videos[:1], videos[1:]]), model, batch_size=3)
    whole = inception_features(to_uint8_frames(videos), model)
    assert streamed.count == whole.count == 4
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(streamed.cov, whole.cov, rtol=1e-3, atol=1e-8)


def test_cli_eval_fid(weights_file, tmp_path, capsys):
    """moviola eval fid: FID and IS over the frames of video folders (random weights, their digest)."""
    import json

    from moviola.cli import main
    from moviola.video import save_video

    for name, seed in (("real", 0), ("fake", 1)):
        g = torch.Generator().manual_seed(seed)
        (tmp_path / name).mkdir()
        for i in range(2):
            save_video(torch.rand(3, 3, 80, 80, generator=g) * 2 - 1, tmp_path / name / f"{i}.gif")
    digest = file_sha256(weights_file)
    args = ["eval", "fid", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--weights", str(weights_file), "--batch-size", "3"]
    assert main([*args, "--weights-sha256", digest, "--splits", "2", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["real_frames"] == result["generated_frames"] == 6
    assert result["fid"] > 0 and result["inception_score"] >= 1.0 and result["weights_sha256"] == digest
    capsys.readouterr()
    assert main(args) == 2  # the pinned digest is not this random file's
    assert "6726825d" in capsys.readouterr().err
