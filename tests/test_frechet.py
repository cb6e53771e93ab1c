"""FeatureStats and the Fréchet distance (FID/FVD numerics) against scipy / numpy references."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from moviola.eval.frechet import FeatureStats, frechet_distance, frechet_distance_from_stats

scipy_linalg = pytest.importorskip("scipy.linalg")

EPS = np.finfo(np.float64).eps
PYTORCH_FID_EPS = 1e-6  # pytorch-fid's diagonal offset when sqrtm's result is not finite


def scipy_fd(mu1, s1, mu2, s2):
    """pytorch-fid's ``calculate_frechet_distance`` (without the deprecated ``disp`` argument).

    Returns (distance, used_eps_fallback)."""
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    fallback = False
    bad_imag = np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
    if not np.isfinite(covmean).all() or bad_imag:
        offset = np.eye(s1.shape[0]) * PYTORCH_FID_EPS
        covmean = scipy_linalg.sqrtm((s1 + offset) @ (s2 + offset))
        fallback = True
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real), fallback


def near_singular_tol(s1, s2, fallback):
    """Absolute tolerance on d² when the covariances are (nearly) singular.

    An eigenvalue of M = S1^(1/2) S2 S1^(1/2) that is 0 (or 1e-12) in exact arithmetic comes out
    of any float64 method perturbed by delta ~ D * eps * |M|; its square root then moves by up to
    sqrt(delta). With D such eigenvalues, and d² using 2 * tr(sqrt(M)), both our result and scipy's
    can be off by 2 * D * sqrt(D * eps * |S1| |S2|): ~5e-6 for D = 32 and unit-scale covariances
    (observed differences are ~1e-6 of that bound's size or less; the bugs that matter are O(1)).
    pytorch-fid's eps fallback adds its own bias: sqrt((a+e)(b+e)) - sqrt(ab) <= sqrt(e(a+b)) + e
    per direction.
    """
    d = s1.shape[0]
    n1, n2 = np.linalg.norm(s1, 2), np.linalg.norm(s2, 2)
    tol = 2 * d * np.sqrt(d * EPS * n1 * n2)
    if fallback:
        tol += 2 * d * (np.sqrt(PYTORCH_FID_EPS * (n1 + n2)) + PYTORCH_FID_EPS)
    return tol


def random_gaussian(rng, d, n):
    """Mean and unbiased covariance of n correlated, anisotropic samples in d dims."""
    mix = rng.standard_normal((d, d)) * rng.uniform(0.1, 2.0, d)
    x = rng.standard_normal((n, d)) @ mix + rng.standard_normal(d)
    return x.mean(0), np.cov(x, rowvar=False)


def random_spectrum_cov(rng, eigenvalues):
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues),) * 2))
    return (q * eigenvalues) @ q.T, q


def assert_valid_distance(value):
    assert isinstance(value, float)
    assert np.isfinite(value) and value >= 0.0


# ------------------------------------------------------------------ (1) vs scipy on SPD
@pytest.mark.parametrize("d", [4, 16, 64])
def test_matches_scipy_sqrtm_on_random_spd(d):
    rng = np.random.default_rng(d)
    mu1, s1 = random_gaussian(rng, d, 4 * d)
    mu2, s2 = random_gaussian(rng, d, 4 * d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref, fallback = scipy_fd(mu1, s1, mu2, s2)
    assert not fallback
    assert_valid_distance(ours)
    assert abs(ours - ref) < 1e-6 * ref
    assert abs(frechet_distance(mu2, s2, mu1, s1) - ours) < 1e-9 * ref  # symmetric in its arguments
    # torch tensors (float32 included) are accepted and computed in float64
    t = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
    assert frechet_distance(*t) == ours


def test_scipy_comparison_catches_the_eigvalsh_of_product_bug():
    """The tolerance above discriminates: eigvalsh(S1 @ S2) (torch-fidelity #46) is far off."""
    rng = np.random.default_rng(7)
    mu1, s1 = random_gaussian(rng, 16, 64)
    mu2, s2 = random_gaussian(rng, 16, 64)
    ref, _ = scipy_fd(mu1, s1, mu2, s2)
    wrong_tr = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ s2), 0, None)).sum()
    wrong = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * wrong_tr)
    assert abs(wrong - ref) > 1e-3 * ref


# ------------------------------------------------------------------ (2) near-singular
def test_rank_deficient_covariances_fewer_samples_than_dims():
    rng = np.random.default_rng(10)
    d, n = 32, 10  # rank 9 out of 32: scipy's sqrtm returns complex values here
    x = rng.standard_normal((n, d))
    y = 1.5 * rng.standard_normal((n, d)) + 0.2
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    assert np.linalg.matrix_rank(s1) == n - 1
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert_valid_distance(ours)
    ref, fallback = scipy_fd(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= near_singular_tol(s1, s2, fallback)
    assert abs(frechet_distance(mu2, s2, mu1, s1) - ours) <= near_singular_tol(s1, s2, False)


def test_covariance_with_eigenvalues_from_1e_12_to_1():
    rng = np.random.default_rng(11)
    d = 32
    spectrum = np.logspace(-12, 0, d)
    s1, q = random_spectrum_cov(rng, spectrum)
    s2, _ = random_spectrum_cov(rng, spectrum[::-1])  # a different eigenbasis: S1 S2 is not symmetric
    mu1, mu2 = 0.1 * rng.standard_normal(d), np.zeros(d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert_valid_distance(ours)
    ref, fallback = scipy_fd(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= near_singular_tol(s1, s2, fallback)

    # Ground truth without scipy: covariances sharing an eigenbasis commute, and then
    # tr((S1 S2)^(1/2)) = sum sqrt(a_i b_i) exactly.
    b = rng.permutation(spectrum)
    s2c = (q * b) @ q.T
    exact = float(mu1 @ mu1 + spectrum.sum() + b.sum() - 2 * np.sqrt(spectrum * b).sum())
    assert abs(frechet_distance(mu1, s1, mu2, s2c) - exact) <= near_singular_tol(s1, s2c, False)


# ------------------------------------------------------------------ (3) identity and mean shift
@pytest.mark.parametrize("d", [4, 64])
def test_self_distance_is_zero_and_mean_shift_adds_its_squared_norm(d):
    rng = np.random.default_rng(100 + d)
    mu, s = random_gaussian(rng, d, 8 * d)
    scale = float(np.trace(s))
    assert frechet_distance(mu, s, mu, s) < 1e-8 * scale
    shift = rng.standard_normal(d)
    expected = float(shift @ shift)
    got = frechet_distance(mu, s, mu + shift, s)
    assert abs(got - expected) < 1e-8 * (expected + scale)
    got_big = frechet_distance(mu, s, mu + 3 * shift, s)
    assert abs(got_big - 9 * expected) < 1e-8 * (9 * expected + scale)


def test_mean_shift_with_rank_deficient_covariance():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 32))
    mu, s = x.mean(0), np.cov(x, rowvar=False)
    self_distance = frechet_distance(mu, s, mu, s)
    assert_valid_distance(self_distance)  # round-off can push the raw d² below 0; reported as 0.0
    assert self_distance <= near_singular_tol(s, s, False)
    shift = rng.standard_normal(32)
    got = frechet_distance(mu, s, mu + shift, s)
    assert_valid_distance(got)
    assert abs(got - float(shift @ shift)) <= near_singular_tol(s, s, False)


# ------------------------------------------------------------------ (4) streaming accumulation
def _chunks(x, rng):
    i = 0
    while i < len(x):
        step = int(rng.choice([0, 1, 2, 7, 33]))
        yield x[i:i + step]
        i += step


def test_streaming_over_random_chunks_matches_numpy():
    rng = np.random.default_rng(3)
    d = 12
    # a large common offset: a naive E[xx^T] - mu mu^T would lose ~8 digits here
    x = rng.standard_normal((301, d)) @ rng.standard_normal((d, d)) + 1e4
    stats = FeatureStats(meta={"run": 1})
    for chunk in _chunks(x, rng):
        stats.update(chunk)
    assert stats.count == len(x) and stats.dim == d
    ref_cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-10, atol=0)
    np.testing.assert_allclose(stats.cov, ref_cov, rtol=1e-10, atol=1e-10 * np.abs(ref_cov).max())
    np.testing.assert_allclose(stats.covariance(ddof=0), np.cov(x, rowvar=False, bias=True),
                               rtol=1e-10, atol=1e-10 * np.abs(ref_cov).max())

    # merge: split at a random point, accumulate each part separately (torch input for one part)
    cut = 117
    a = FeatureStats()
    for chunk in _chunks(x[:cut], rng):
        a.update(chunk)
    b = FeatureStats(dim=d)
    for chunk in _chunks(x[cut:], rng):
        b.update(torch.from_numpy(chunk))
    for merged in (FeatureStats().merge(a).merge(b), FeatureStats().merge(b).merge(a)):
        assert merged.count == len(x)
        np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-10, atol=0)
        np.testing.assert_allclose(merged.cov, ref_cov, rtol=1e-10, atol=1e-10 * np.abs(ref_cov).max())
    assert frechet_distance_from_stats(stats, a.merge(b)) < 1e-8


def test_float32_torch_features_are_accumulated_in_float64():
    rng = np.random.default_rng(4)
    x32 = torch.from_numpy(rng.standard_normal((50, 6)).astype(np.float32) + 300)
    stats = FeatureStats().update(x32[:20]).update(x32[20:])
    x64 = x32.double().numpy()
    np.testing.assert_allclose(stats.cov, np.cov(x64, rowvar=False), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ (5) save / load
class _Tripwire:
    """Unpickling this creates a file: proof that a loader executed pickle code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    meta = {"detector": "i3d_torchscript", "sha256": "bec6...", "clips": 2048, "frames": 16,
            "nested": {"mirror": True, "note": "Fréchet"}}
    stats = FeatureStats(meta=meta).update(rng.standard_normal((40, 5)))
    path = tmp_path / "real_stats.fvd"  # no .npz suffix: the exact name is kept
    assert stats.save(path) == path and path.exists()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    loaded = FeatureStats.load(path)
    assert loaded.count == 40 and loaded.dim == 5 and loaded.meta == meta
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    more = rng.standard_normal((9, 5))  # a loaded file keeps accumulating exactly
    np.testing.assert_array_equal(loaded.update(more).cov, stats.update(more).cov)
    with np.load(path, allow_pickle=False) as z:  # plain arrays, readable without moviola
        assert int(z["count"]) == 49 - 9


def test_load_refuses_pickles(tmp_path):
    tripwire = tmp_path / "unpickled"
    # a StyleGAN-V-style cache: a pickled dict
    pkl = tmp_path / "stats.pkl"
    pkl.write_bytes(pickle.dumps({"num_items": 3, "payload": _Tripwire(tripwire)}))
    with pytest.raises(ValueError, match="refused"):
        FeatureStats.load(pkl)
    # an npz with the right keys, but meta as a pickled object array
    good = tmp_path / "good.npz"
    FeatureStats(meta={"a": 1}).update(np.eye(3)).save(good)
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array([_Tripwire(tripwire)], dtype=object)
    evil = tmp_path / "evil.npz"
    np.savez(evil, **arrays)
    with pytest.raises(ValueError, match="pickled"):
        FeatureStats.load(evil)
    assert not tripwire.exists()


def test_load_rejects_malformed_files(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, mean=np.zeros(3))
    with pytest.raises(ValueError, match="expected keys"):
        FeatureStats.load(p)
    good = tmp_path / "good.npz"
    FeatureStats().update(np.eye(3)).save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError):
        FeatureStats.load(truncated)
    with pytest.raises(ValueError, match="JSON"):
        FeatureStats(meta={"bad": object()}).update(np.eye(3)).save(tmp_path / "y.npz")


# ------------------------------------------------------------------ (6) bad input
def test_update_rejects_bad_features_and_leaves_stats_unchanged():
    rng = np.random.default_rng(8)
    stats = FeatureStats(dim=4).update(rng.standard_normal((5, 4)))
    before = (stats.count, stats.mean, stats.cov)
    with pytest.raises(ValueError, match="width 3"):
        stats.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="2-D"):
        stats.update(np.zeros(4))
    for bad in (np.nan, np.inf):
        x = rng.standard_normal((3, 4))
        x[1, 2] = bad
        with pytest.raises(ValueError, match="non-finite"):
            stats.update(x)
    with pytest.raises(ValueError, match="non-finite"):
        stats.update(torch.full((2, 4), float("nan")))
    assert stats.count == before[0]
    np.testing.assert_array_equal(stats.mean, before[1])
    np.testing.assert_array_equal(stats.cov, before[2])
    with pytest.raises(ValueError, match="width"):
        stats.merge(FeatureStats().update(np.zeros((2, 5))))
    with pytest.raises(ValueError, match="meta"):
        FeatureStats(meta={"detector": "a"}).merge(FeatureStats(meta={"detector": "b"}))


def test_fewer_than_two_samples():
    one = FeatureStats().update(np.ones((1, 3)))
    np.testing.assert_array_equal(one.mean, np.ones(3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        one.cov
    with pytest.raises(ValueError, match="at least 1 sample"):
        FeatureStats(dim=3).mean
    two = FeatureStats().update(np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance_from_stats(two, one)
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance_from_stats(two, FeatureStats().update(np.eye(4)))


def test_frechet_distance_rejects_bad_arguments():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="same shape"):
        frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="1-D"):
        frechet_distance(np.zeros((3, 1)), s, np.zeros((3, 1)), s)
    nan_mu = mu.copy()
    nan_mu[0] = np.nan
    with pytest.raises(ValueError, match="mu1 contains 1 non-finite"):
        frechet_distance(nan_mu, s, mu, s)
    inf_s = s.copy()
    inf_s[1, 1] = np.inf
    with pytest.raises(ValueError, match="sigma2 contains"):
        frechet_distance(mu, s, mu, inf_s)
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(mu, np.triu(np.ones((3, 3))), mu, s)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, -s, mu, s)
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, s, mu, np.diag([1.0, 1.0, -0.5]))
    with pytest.raises(ValueError, match="real"):
        frechet_distance(mu, s.astype(complex), mu, s)
