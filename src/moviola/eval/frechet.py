"""Feature statistics and the Fréchet distance behind FID / FVD.

``FeatureStats`` accumulates the mean and covariance of detector features (Inception for FID,
I3D for FVD) in a stream of batches; ``frechet_distance`` compares two Gaussians fitted to them:

    d² = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

Accumulation (float64, whatever the input dtype). Each batch is reduced to its count, mean and
centred scatter matrix ``M2 = sum (x - mean)(x - mean)^T``, and batches are combined with Chan et
al.'s parallel update (``M2 = M2a + M2b + delta delta^T na nb / n``). Unlike StyleGAN-V's running
sum of raw outer products (``cov = E[x x^T] - mu mu^T``), this never subtracts two large numbers,
so features with a large mean offset keep their precision. ``merge`` combines stats computed on
different workers or chunks exactly the same way.

Covariance convention. ``FeatureStats.cov`` is the unbiased estimate (divide by N - 1), as in
pytorch-fid and clean-fid (``np.cov(features, rowvar=False)``). StyleGAN-V, whose FVD protocol
Latte copies, uses the biased estimate (divide by N: ``raw_cov / num_items - outer(mean, mean)``);
``covariance(ddof=0)`` and ``frechet_distance_from_stats(..., ddof=0)`` reproduce it. The two
differ by the factor N / (N - 1) on both covariances, about 0.05 % at N = 2048.

Matrix square root. Only the trace of ``(S1 S2)^(1/2)`` is needed, and the eigenvalues of
``S1 S2`` equal those of the symmetric positive semi-definite matrix ``S1^(1/2) S2 S1^(1/2)``
(they are similar when S1 is invertible, and the identity extends to singular S1 by continuity).
So with A = S1, B = S2:

1. ``eigh(A) = V diag(w) V^T``; clamp ``w`` at 0 and form ``A^(1/2) = V diag(sqrt(w)) V^T``;
2. ``eigvalsh(A^(1/2) B A^(1/2))``; clamp at 0; the trace is the sum of their square roots.

Why not ``scipy.linalg.sqrtm(S1 @ S2)`` as pytorch-fid, clean-fid and StyleGAN-V do: ``S1 @ S2``
is not symmetric, so its Schur-based square root is computed in complex arithmetic and returns
complex values with spurious imaginary parts whenever the product is near-singular (always the
case with fewer samples than feature dimensions); pytorch-fid then retries with ``1e-6`` added to
both diagonals (a bias of up to ``sqrt(1e-6 * lambda)`` per missing direction) and discards the
imaginary part. Some SciPy releases (1.11.2 - 1.12.0) return huge imaginary parts on ordinary FID
matrices, and ``sqrtm`` is slow on 2048 x 2048. ``eigh`` of a symmetric matrix is backward stable
and returns real eigenvalues: round-off only perturbs each eigenvalue by about
``D * eps * |lambda_max|``, so no complex part ever appears, nothing needs an eps offset, and a
rank-deficient covariance just contributes (clamped) zeros. Everything is computed in float64:
storing statistics or products in float32 shifts FD by ~0.1 %.

Do not replace step 2 by ``eigvalsh(S1 @ S2)``: the product is not symmetric and ``eigvalsh``
silently reads one triangle of it (torch-fidelity issue #46).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

FORMAT_NAME = "moviola.FeatureStats"
FORMAT_VERSION = 1
_KEYS = frozenset({"format", "version", "count", "mean", "m2", "meta"})
# A covariance eigenvalue below -_NEG_EIG_RTOL * D * lambda_max is more negative than float32
# round-off can explain: the matrix is not a covariance, so we raise instead of clamping it.
_NEG_EIG_RTOL = float(np.finfo(np.float32).eps)
# Relative asymmetry tolerated (and symmetrized away) in an input covariance.
_ASYM_RTOL = 1e-5

__all__ = ["FeatureStats", "frechet_distance", "frechet_distance_from_stats"]


def _to_float64(x: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor / array / nested list of real numbers."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real, got a complex tensor ({x.dtype})")
        if x.dtype == torch.bool:
            raise ValueError(f"{name} must be numeric, got a bool tensor")
        return x.detach().to("cpu", torch.float64).numpy().copy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=True)


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def _combine(n_a: int, mean_a: np.ndarray, m2_a: np.ndarray,
             n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s pairwise update of (count, mean, centred scatter)."""
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b.copy(), m2_b.copy()
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
    return n, mean, m2


class FeatureStats:
    """Streaming float64 mean / covariance of ``(N, D)`` feature batches.

    ``dim`` may be left ``None``; the first batch sets it. ``meta`` is a free-form JSON-serializable
    dict saved with the stats (detector, its checksum, clip protocol, ... for cache keys).

    >>> stats = FeatureStats(meta={"detector": "i3d"})
    >>> for feats in batches:            # doctest: +SKIP
    ...     stats.update(feats)          # torch tensor or ndarray, any real dtype, any device
    >>> stats.mean, stats.cov            # doctest: +SKIP
    """

    def __init__(self, dim: Optional[int] = None, meta: Optional[dict] = None):
        if dim is not None and (not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
        self.dim: Optional[int] = None if dim is None else int(dim)
        self.meta: dict = dict(meta or {})
        self.count = 0
        self._mean: Optional[np.ndarray] = None
        self._m2: Optional[np.ndarray] = None
        if self.dim is not None:
            self._reset_arrays(self.dim)

    def _reset_arrays(self, dim: int) -> None:
        self._mean = np.zeros(dim, dtype=np.float64)
        self._m2 = np.zeros((dim, dim), dtype=np.float64)

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, count={self.count}, meta={self.meta!r})"

    # ---------------------------------------------------------------- accumulation
    def update(self, features: ArrayLike) -> "FeatureStats":
        """Add a batch of ``(N, D)`` features. Validates the whole batch before changing anything."""
        x = _to_float64(features, "features")
        if x.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D), got shape {tuple(x.shape)}")
        if self.dim is not None and x.shape[1] != self.dim:
            raise ValueError(f"features have width {x.shape[1]}, but these stats hold width {self.dim}")
        if x.shape[1] == 0:
            raise ValueError("features have width 0")
        _check_finite(x, "features")
        if self.dim is None:
            self.dim = int(x.shape[1])
            self._reset_arrays(self.dim)
        n_b = int(x.shape[0])
        if n_b == 0:
            return self
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        self.count, self._mean, self._m2 = _combine(self.count, self._mean, self._m2, n_b, mean_b, m2_b)
        return self

    def merge(self, other: "FeatureStats", *, check_meta: bool = True) -> "FeatureStats":
        """Add ``other``'s samples to these stats (in place; returns ``self``).

        With ``check_meta`` (default), two non-empty, different ``meta`` dicts are refused: they
        usually mean different detectors or protocols. ``self.meta`` is kept (or taken from
        ``other`` when empty).
        """
        if not isinstance(other, FeatureStats):
            raise TypeError(f"can only merge FeatureStats, got {type(other).__name__}")
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"cannot merge stats of width {other.dim} into stats of width {self.dim}")
        if check_meta and self.meta and other.meta and self.meta != other.meta:
            raise ValueError(f"cannot merge stats with different meta: {self.meta!r} vs {other.meta!r} "
                             "(pass check_meta=False to merge anyway)")
        if not self.meta:
            self.meta = dict(other.meta)
        if other.dim is None:
            return self
        if self.dim is None:
            self.dim = other.dim
            self._reset_arrays(self.dim)
        self.count, self._mean, self._m2 = _combine(self.count, self._mean, self._m2,
                                                    other.count, other._mean.copy(), other._m2.copy())
        return self

    # ---------------------------------------------------------------- results
    @property
    def mean(self) -> np.ndarray:
        """``(D,)`` float64 mean (a copy)."""
        if self.count < 1:
            raise ValueError("the mean needs at least 1 sample; these stats hold 0")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """``(D, D)`` float64 unbiased covariance (divide by N - 1, as ``np.cov`` / pytorch-fid)."""
        return self.covariance(ddof=1)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """``ddof=1``: unbiased (pytorch-fid, clean-fid); ``ddof=0``: divide by N (StyleGAN-V)."""
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {ddof!r}")
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples; these stats hold {self.count}")
        m2 = 0.5 * (self._m2 + self._m2.T)
        return m2 / (self.count - ddof)

    # ---------------------------------------------------------------- persistence
    def save(self, path: Union[str, Path]) -> Path:
        """Write an ``.npz`` (no pickled objects) at exactly ``path``, atomically (temp file + rename)."""
        if self.dim is None:
            raise ValueError("these stats have no feature width yet (no update and no dim): nothing to save")
        try:
            meta_json = json.dumps(self.meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"meta must be JSON-serializable (no NaN/inf): {e}") from None
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        arrays = {
            "format": np.array(FORMAT_NAME),
            "version": np.array(FORMAT_VERSION, dtype=np.int64),
            "count": np.array(self.count, dtype=np.int64),
            "mean": self._mean,
            "m2": self._m2,
            "meta": np.array(meta_json),  # a unicode array, not an object array
        }
        try:
            with open(tmp, "wb") as f:  # a file object, so numpy does not append ".npz" to the name
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "FeatureStats":
        """Read a file written by :meth:`save`. Never unpickles: ``np.load(allow_pickle=False)``."""
        path = Path(path)
        try:
            obj = np.load(path, allow_pickle=False)
        except ValueError as e:  # a pickle (e.g. a StyleGAN-V .pkl cache) or not a numpy file at all
            raise ValueError(f"{path}: not a FeatureStats .npz, refused ({e})") from None
        except (zipfile.BadZipFile, EOFError) as e:  # truncated / corrupt archive
            raise ValueError(f"{path}: corrupt .npz ({e})") from None
        if not isinstance(obj, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: a single .npy array, not a FeatureStats .npz")
        with obj:
            keys = set(obj.files)
            if keys != _KEYS:
                raise ValueError(f"{path}: expected keys {sorted(_KEYS)}, found {sorted(keys)}")
            try:
                data = {k: obj[k] for k in _KEYS}
            except ValueError as e:  # "Object arrays cannot be loaded when allow_pickle=False"
                raise ValueError(f"{path}: contains pickled objects, refused ({e})") from None
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise ValueError(f"{path}: corrupt archive ({e})") from None

        def scalar(key: str, kind: str) -> np.ndarray:
            a = data[key]
            if a.shape != () or a.dtype.kind not in kind:
                raise ValueError(f"{path}: '{key}' must be a scalar of kind {kind!r}, "
                                 f"got dtype {a.dtype} shape {a.shape}")
            return a[()]

        if str(scalar("format", "U")) != FORMAT_NAME:
            raise ValueError(f"{path}: format {data['format']!r} is not {FORMAT_NAME!r}")
        version = int(scalar("version", "iu"))
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported FeatureStats format version {version}")
        count = int(scalar("count", "iu"))
        if count < 0:
            raise ValueError(f"{path}: negative count {count}")
        mean, m2 = data["mean"], data["m2"]
        if mean.dtype != np.float64 or m2.dtype != np.float64:
            raise ValueError(f"{path}: mean/m2 must be float64, got {mean.dtype}/{m2.dtype}")
        if mean.ndim != 1 or mean.shape[0] < 1 or m2.shape != (mean.shape[0],) * 2:
            raise ValueError(f"{path}: inconsistent shapes mean {mean.shape}, m2 {m2.shape}")
        _check_finite(mean, f"{path}: mean")
        _check_finite(m2, f"{path}: m2")
        try:
            meta = json.loads(str(scalar("meta", "U")))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: meta is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: meta must be a JSON object, got {type(meta).__name__}")

        stats = cls(dim=int(mean.shape[0]), meta=meta)
        stats.count = count
        stats._mean = np.array(mean, dtype=np.float64)
        stats._m2 = np.array(m2, dtype=np.float64)
        return stats


# -------------------------------------------------------------------- distance
def _checked_cov(sigma: ArrayLike, name: str, dim: int) -> np.ndarray:
    s = _to_float64(sigma, name)
    if s.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}) to match the means, got {tuple(s.shape)}")
    _check_finite(s, name)
    scale = float(np.abs(s).max()) if s.size else 0.0
    asym = float(np.abs(s - s.T).max()) if s.size else 0.0
    if asym > _ASYM_RTOL * scale:
        raise ValueError(f"{name} is not symmetric (max |S - S^T| = {asym:.3g}, max |S| = {scale:.3g})")
    return 0.5 * (s + s.T)


def _clamp_eigs(w: np.ndarray, name: str) -> np.ndarray:
    """Clamp round-off negatives to 0; raise on eigenvalues too negative to be round-off."""
    top = float(np.abs(w).max()) if w.size else 0.0
    tol = _NEG_EIG_RTOL * w.size * top
    if w.size and float(w.min()) < -tol:
        raise ValueError(f"{name} is not positive semi-definite: eigenvalue {float(w.min()):.3g} "
                         f"(largest magnitude {top:.3g}); not a covariance matrix")
    return np.clip(w, 0.0, None)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (what FID/FVD report).

    Inputs: ``(D,)`` means and ``(D, D)`` symmetric PSD covariances, numpy or torch, any real
    dtype; everything is converted to float64. The trace of the matrix square root is computed
    by the symmetric eigen-decomposition method described in the module docstring. Raises
    ValueError for mismatched shapes, non-finite values, or a covariance that is not symmetric or
    has eigenvalues too negative to be round-off. The result is a Python float >= 0 (a round-off
    negative is returned as 0.0).
    """
    m1 = _to_float64(mu1, "mu1")
    m2 = _to_float64(mu2, "mu2")
    if m1.ndim != 1 or m1.shape[0] < 1:
        raise ValueError(f"mu1 must be a non-empty 1-D vector, got shape {tuple(m1.shape)}")
    if m2.shape != m1.shape:
        raise ValueError(f"mu1 and mu2 must have the same shape, got {tuple(m1.shape)} and {tuple(m2.shape)}")
    _check_finite(m1, "mu1")
    _check_finite(m2, "mu2")
    dim = m1.shape[0]
    a = _checked_cov(sigma1, "sigma1", dim)
    b = _checked_cov(sigma2, "sigma2", dim)

    w, v = np.linalg.eigh(a)
    w = _clamp_eigs(w, "sigma1")
    sqrt_a = (v * np.sqrt(w)) @ v.T
    mid = sqrt_a @ b @ sqrt_a
    mid = 0.5 * (mid + mid.T)
    lam = _clamp_eigs(np.linalg.eigvalsh(mid), "sigma1^(1/2) sigma2 sigma1^(1/2) (so sigma2)")
    tr_covmean = float(np.sqrt(lam).sum())

    diff = m1 - m2
    d2 = float(diff @ diff) + float(np.trace(a)) + float(np.trace(b)) - 2.0 * tr_covmean
    if not np.isfinite(d2):
        raise ValueError("Fréchet distance overflowed float64; rescale the features")
    return max(d2, 0.0)


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats, *, ddof: int = 1) -> float:
    """``frechet_distance`` of two ``FeatureStats``; ``ddof=0`` for StyleGAN-V's biased covariance."""
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, FeatureStats):
            raise TypeError(f"{name} must be FeatureStats, got {type(s).__name__}")
    if a.dim != b.dim:
        raise ValueError(f"feature widths differ: {a.dim} vs {b.dim}")
    return frechet_distance(a.mean, a.covariance(ddof), b.mean, b.covariance(ddof))
