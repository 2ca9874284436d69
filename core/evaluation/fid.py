"""Fréchet Inception Distance: features, statistics and the Fréchet distance, in float64.

``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``. With scipy installed, ``tr sqrt(S1 S2)`` is
taken from ``scipy.linalg.sqrtm(S1 @ S2)`` exactly as the papers' scripts (pytorch-fid's procedure: on a
non-finite result retry with ``1e-6`` added to both diagonals; a complex result with a diagonal imaginary part
above 1e-3 is an error, else the real part is kept). Without scipy: the eigen route
``sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))`` (symmetric, so ``eigvalsh``), equal in exact arithmetic.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable, Iterable

import numpy as np
import torch

from .profiles import used_count


def _vec(x, what: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if arr.ndim != 1 or not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected a finite 1-D mean vector, got shape {arr.shape}")
    return arr


def _mat(x, n: int, what: str) -> np.ndarray:
    arr = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if arr.shape != (n, n) or not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected a finite ({n}, {n}) covariance matrix, got shape {arr.shape}")
    return arr


def _trace_sqrt_product_scipy(s1: np.ndarray, s2: np.ndarray, eps: float) -> float:
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"covariances: sqrtm(S1 S2) has an imaginary component {m:.3g}; the statistics "
                             f"are too ill-conditioned (use more images)")
        covmean = covmean.real
    return float(np.trace(covmean))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _trace_sqrt_product_eigen(s1: np.ndarray, s2: np.ndarray) -> float:
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sum(np.sqrt(np.clip(w, 0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6, method: str = "auto") -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (float64). ``method``: ``"auto"``
    (scipy's sqrtm when installed, else eigen), ``"sqrtm"`` or ``"eigen"``."""
    if method not in ("auto", "sqrtm", "eigen"):
        raise ValueError(f"method: expected 'auto', 'sqrtm' or 'eigen', got {method!r}")
    m1 = _vec(mu1, "mu1")
    m2 = _vec(mu2, "mu2")
    if m1.shape != m2.shape:
        raise ValueError(f"mu1 and mu2: expected the same length, got {m1.shape[0]} and {m2.shape[0]}")
    s1 = _mat(sigma1, m1.shape[0], "sigma1")
    s2 = _mat(sigma2, m1.shape[0], "sigma2")
    diff = m1 - m2
    if method == "auto":
        method = "sqrtm" if importlib.util.find_spec("scipy") is not None else "eigen"
    if method == "sqrtm":
        tr_covmean = _trace_sqrt_product_scipy(s1, s2, eps)
    else:
        tr_covmean = _trace_sqrt_product_eigen(s1, s2)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """``(N, D)`` features -> ``(mu, sigma)``: float64 mean and ``np.cov(rowvar=False)`` (N - 1 normalised)."""
    act = np.asarray(features, dtype=np.float64)
    if act.ndim != 2 or act.shape[0] < 2:
        raise ValueError(f"features: expected (N, D) with N >= 2 images, got shape {act.shape}")
    if not np.isfinite(act).all():
        raise ValueError("features: expected finite values, got NaN or infinity")
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def fid_from_features(features1, features2) -> float:
    """FID of two feature sets ``(N1, D)``, ``(N2, D)``."""
    mu1, s1 = activation_statistics(features1)
    mu2, s2 = activation_statistics(features2)
    return frechet_distance(mu1, s1, mu2, s2)


@torch.no_grad()
def compute_features(images: Iterable[np.ndarray], model: torch.nn.Module, batch_size: int = 16,
                     device: str | torch.device = "cpu",
                     progress: Callable[[int], None] | None = None) -> np.ndarray:
    """0..1 float ``(H, W, 3)`` images (an iterable, read lazily) -> ``(N, D)`` float64 features.

    Each image's features do not depend on the batch it runs in (eval mode), so ``batch_size`` is only a
    memory setting; the papers' "full batches only" rule is applied afterwards (:func:`profile_subset`).
    Images in one batch must share a size (the wrapper resizes to 299 anyway; different sizes run apart)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    model = model.to(device).eval()
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush():
        if batch:
            x = torch.from_numpy(np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))).float()
            out.append(model(x.to(device)).double().cpu().numpy())
            if progress is not None:
                progress(len(batch))
            batch.clear()

    for i, img in enumerate(images):
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"images[{i}]: expected (H, W, 3), got shape {arr.shape}")
        if batch and batch[0].shape != arr.shape:
            flush()
        batch.append(arr)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not out:
        raise ValueError("images: expected at least one image, got none")
    return np.concatenate(out, axis=0)


def profile_subset(features: np.ndarray, batch: int) -> np.ndarray:
    """The rows the papers' loops keep: the first ``used_count(N, batch)``."""
    return features[:used_count(len(features), batch)]


def save_statistics(path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """``np.savez(path, mu=..., sigma=...)`` -- the cache format of the papers' scripts."""
    np.savez(path, mu=mu, sigma=sigma)


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
    """``mu``, ``sigma`` from an ``.npz`` written by the papers' scripts or :func:`save_statistics`."""
    path = os.fspath(path)
    try:
        with np.load(path) as f:
            if "mu" not in f or "sigma" not in f:
                raise ValueError(f"{path}: expected arrays 'mu' and 'sigma', got {sorted(f.files)}")
            mu, sigma = f["mu"][:], f["sigma"][:]
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: expected an .npz file with 'mu' and 'sigma' ({exc})") from None
    mu = _vec(mu, f"{path}: mu")
    return mu, _mat(sigma, mu.shape[0], f"{path}: sigma")
