"""Per-image reconstruction metrics: SSIM (exactly as scikit-image computes it), PSNR, L1, masked variants.

No scikit-image needed. :func:`structural_similarity` follows ``skimage.metrics.structural_similarity``
(scikit-image >= 0.16) operation by operation, so the numbers agree to float rounding:

* the computation runs in the float type skimage picks from ``im1``'s dtype (float16/float32 -> float32,
  everything else -> float64; skimage < 0.19 -- ``skimage.measure.compare_ssim``, which GFLA and PIDM used --
  always computed in float64: cast the inputs to float64 to get those numbers);
* ``gaussian_weights=True``: a Gaussian of ``sigma`` truncated at 3.5 sigma (``win_size = 2 * int(3.5 *
  sigma + 0.5) + 1``), ``mode="reflect"``; else a ``win_size`` box filter (default 7);
* per-channel SSIMs are stored in that float type and averaged (``channel_axis``).

The filters are ``scipy.ndimage`` ones when scipy is installed (what skimage calls), else a numpy version that
does the same double-precision sums in the same order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

GAUSSIAN_TRUNCATE = 3.5  # skimage's choice: an 11-tap window for sigma 1.5


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_array(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is a bad input
        raise ValueError(f"{what}: expected an image array, got {type(value).__name__} ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{what}: expected a numeric image array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{what}: expected a non-empty image, got shape {tuple(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{what}: expected finite values, got NaN or infinity")
    return arr


def _same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} and {names[1]}: expected the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def supported_float_type(dtype) -> np.dtype:
    """skimage's ``_supported_float_type``: float16/float32 -> float32, float64 stays, the rest -> float64."""
    dtype = np.dtype(dtype)
    if dtype == np.float16 or dtype == np.float32:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


# -------------------------------------------------------------------------------------------------- filters

def gaussian_kernel(sigma: float, truncate: float = GAUSSIAN_TRUNCATE) -> np.ndarray:
    """The float64 1-D kernel ``scipy.ndimage.gaussian_filter1d`` uses (radius ``int(truncate*sigma+0.5)``)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return phi / phi.sum()


def _pad_reflect(a: np.ndarray, before: int, after: int) -> np.ndarray:
    """scipy.ndimage's ``mode="reflect"`` (d c b a | a b c d | d c b a) along the last axis."""
    return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(before, after)], mode="symmetric")


def _np_correlate_symmetric(arr: np.ndarray, weights: np.ndarray, axis: int, out_dtype) -> np.ndarray:
    """scipy's symmetric-kernel correlate1d: double sums ``w0*x0 + sum_{j=r..1} (x[-j] + x[+j]) * w_j``."""
    r = (len(weights) - 1) // 2
    a = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, -1)
    n = a.shape[-1]
    p = _pad_reflect(a, r, r)
    acc = p[..., r:r + n] * weights[r]
    for j in range(r, 0, -1):
        acc += (p[..., r - j:r - j + n] + p[..., r + j:r + j + n]) * weights[r - j]
    return np.moveaxis(acc.astype(out_dtype), -1, axis)


def _np_uniform1d(arr: np.ndarray, size: int, axis: int, out_dtype) -> np.ndarray:
    """scipy's uniform_filter1d (reflect): first window summed, then a running mean ``+= (in - out) / size``."""
    a = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, -1)
    n = a.shape[-1]
    before = size // 2
    p = _pad_reflect(a, before, size - before - 1)
    first = p[..., 0].copy()
    for k in range(1, size):
        first += p[..., k]
    steps = np.empty(a.shape, dtype=np.float64)
    steps[..., 0] = first / size
    steps[..., 1:] = (p[..., size:size + n - 1] - p[..., :n - 1]) / size
    return np.moveaxis(np.cumsum(steps, axis=-1).astype(out_dtype), -1, axis)


def _filters(backend: str):
    """``(gaussian(img, sigma, truncate), uniform(img, size))`` for the backend ("auto", "scipy" or "numpy")."""
    if backend not in ("auto", "scipy", "numpy"):
        raise ValueError(f"backend: expected 'auto', 'scipy' or 'numpy', got {_short(backend)}")
    if backend in ("auto", "scipy"):
        try:
            from scipy import ndimage
        except ImportError:
            if backend == "scipy":
                raise ValueError("backend: 'scipy' asked for but scipy is not installed") from None
        else:
            def gaussian(img, sigma, truncate):
                return ndimage.gaussian_filter(img, sigma=sigma, truncate=truncate, mode="reflect")

            def uniform(img, size):
                return ndimage.uniform_filter(img, size=size)
            return gaussian, uniform

    def gaussian(img, sigma, truncate):
        w = gaussian_kernel(sigma, truncate)
        out = img
        for axis in range(img.ndim):
            out = _np_correlate_symmetric(out, w, axis, img.dtype)
        return out

    def uniform(img, size):
        out = img
        for axis in range(img.ndim):
            out = _np_uniform1d(out, size, axis, img.dtype)
        return out
    return gaussian, uniform


# ----------------------------------------------------------------------------------------------------- SSIM

def structural_similarity(im1, im2, *, win_size: int | None = None, data_range=None,
                          channel_axis: int | None = None, gaussian_weights: bool = False, sigma: float = 1.5,
                          use_sample_covariance: bool = True, K1: float = 0.01, K2: float = 0.03,
                          backend: str = "auto") -> float:
    """Mean SSIM of two images, computed as ``skimage.metrics.structural_similarity`` does (see the module
    docstring). ``data_range`` is required for float images (integer images default to their dtype's range).
    Papers' settings: :mod:`.profiles` (PCDMs/PIDM: ``gaussian_weights=True, sigma=1.2,
    use_sample_covariance=False, data_range=pred.max()-pred.min()`` on 0..255 floats; GFLA: sigma 1.5)."""
    a = _as_array(im1, "im1")
    b = _as_array(im2, "im2")
    _same_shape(a, b, ("im1", "im2"))
    for name, v in (("K1", K1), ("K2", K2), ("sigma", sigma)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(v)) or v < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {_short(v)}")
    float_type = supported_float_type(a.dtype)
    if channel_axis is not None:
        if not isinstance(channel_axis, (int, np.integer)) or not -a.ndim <= channel_axis < a.ndim:
            raise ValueError(f"channel_axis: expected an axis of a {a.ndim}-D image, got {_short(channel_axis)}")
        axis = channel_axis % a.ndim
        nch = a.shape[axis]
        mssim = np.empty(nch, dtype=float_type)
        for ch in range(nch):
            mssim[ch] = structural_similarity(
                np.take(a, ch, axis=axis), np.take(b, ch, axis=axis), win_size=win_size, data_range=data_range,
                gaussian_weights=gaussian_weights, sigma=sigma, use_sample_covariance=use_sample_covariance,
                K1=K1, K2=K2, backend=backend)
        return float(mssim.mean())

    if gaussian_weights:
        truncate = GAUSSIAN_TRUNCATE
    if win_size is None:
        win_size = 2 * int(truncate * sigma + 0.5) + 1 if gaussian_weights else 7
    if isinstance(win_size, bool) or not isinstance(win_size, (int, np.integer)) or win_size < 1 \
            or win_size % 2 == 0:
        raise ValueError(f"win_size: expected an odd positive integer, got {_short(win_size)}")
    if np.any(np.asarray(a.shape) - win_size < 0):
        raise ValueError(f"im1: the SSIM window ({win_size} px) exceeds the image extent {tuple(a.shape)}; for a "
                         f"colour image pass channel_axis")
    if data_range is None:
        if np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating):
            raise ValueError("data_range: required for float images (e.g. 1.0 for 0..1 images, 255.0 for 0..255)")
        if a.dtype == np.bool_:
            data_range = 1
        else:
            info = np.iinfo(a.dtype)
            data_range = info.max - info.min
    elif not np.isfinite(data_range) or data_range <= 0:
        raise ValueError(f"data_range: expected a positive finite number, got {_short(data_range)}")

    gaussian, uniform = _filters(backend)
    if gaussian_weights:
        def filt(img):
            return gaussian(img, sigma, truncate)
    else:
        def filt(img):
            return uniform(img, win_size)

    x = a.astype(float_type, copy=False)
    y = b.astype(float_type, copy=False)
    NP = win_size ** a.ndim
    cov_norm = NP / (NP - 1) if use_sample_covariance else 1.0

    ux = filt(x)
    uy = filt(y)
    uxx = filt(x * x)
    uyy = filt(y * y)
    uxy = filt(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)

    R = data_range
    C1 = (K1 * R) ** 2
    C2 = (K2 * R) ** 2
    A1, A2, B1, B2 = (2 * ux * uy + C1, 2 * vxy + C2, ux ** 2 + uy ** 2 + C1, vx + vy + C2)
    D = B1 * B2
    S = (A1 * A2) / D
    pad = (win_size - 1) // 2
    inner = S[tuple(slice(pad, n - pad) for n in S.shape)]
    return float(inner.mean(dtype=np.float64))


ssim = structural_similarity


# ------------------------------------------------------------------------------------------- PSNR, L1, MAE

def _pair(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    a = _as_array(gt, "gt")
    b = _as_array(pred, "pred")
    _same_shape(a, b, ("gt", "pred"))
    float_type = np.result_type(a.dtype, b.dtype, np.float32)
    return a.astype(float_type, copy=False), b.astype(float_type, copy=False)


def psnr(gt, pred, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, as ``skimage.metrics.peak_signal_noise_ratio`` (inputs promoted to at
    least float32, the mean squared error accumulated in float64). Identical images give ``inf``."""
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(data_range)) or data_range <= 0:
        raise ValueError(f"data_range: expected a positive finite number, got {_short(data_range)}")
    a, b = _pair(gt, pred)
    err = np.mean((a - b) ** 2, dtype=np.float64)
    if err == 0:
        return math.inf
    return float(10 * np.log10((float(data_range) ** 2) / err))


def l1(gt, pred) -> float:
    """Mean absolute difference, in float32 as the papers' ``compare_l1`` (``np.mean(np.abs(a - b))``)."""
    a, b = _pair(gt, pred)
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def mae_ratio(gt, pred) -> float:
    """The papers' ``compare_mae``: ``sum|a - b| / sum(a + b)`` in float32 (0 when both images are black)."""
    a, b = _pair(gt, pred)
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    den = np.sum(a + b)
    return 0.0 if den == 0 else float(np.sum(np.abs(a - b)) / den)


# -------------------------------------------------------------------------------------------------- masked

def _mask(mask, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    """``(H, W)`` mask (bool or 0..1) for an ``(H, W[, C])`` image -> float64 in 0..1."""
    m = _as_array(mask, what)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.shape != tuple(shape[:2]):
        raise ValueError(f"{what}: expected shape {tuple(shape[:2])} (the image's height and width), got "
                         f"{tuple(m.shape)}")
    m = m.astype(np.float64)
    if m.min() < 0 or m.max() > 1:
        raise ValueError(f"{what}: expected values in 0..1, got {m.min():.4g} to {m.max():.4g}")
    return m


def apply_mask(image, mask) -> np.ndarray:
    """``image * mask`` (mask broadcast over channels), in the image's float type."""
    img = _as_array(image, "image")
    m = _mask(mask, img.shape)
    ft = supported_float_type(img.dtype)
    m = m.astype(ft)
    return img.astype(ft) * (m[:, :, None] if img.ndim == 3 else m)


def masked_l1(gt, pred, mask) -> float:
    """Mean absolute difference inside the mask (mask-weighted mean over pixels and channels); NaN for an
    empty mask."""
    a, b = _pair(gt, pred)
    m = _mask(mask, a.shape)
    w = m[:, :, None] if a.ndim == 3 else m
    channels = a.shape[2] if a.ndim == 3 else 1
    total = m.sum() * channels
    if total == 0:
        return math.nan
    return float(np.sum(np.abs(a.astype(np.float64) - b.astype(np.float64)) * w) / total)


def masked_psnr(gt, pred, mask, data_range: float = 1.0) -> float:
    """PSNR of the mask-weighted mean squared error; NaN for an empty mask, inf when equal inside it."""
    a, b = _pair(gt, pred)
    m = _mask(mask, a.shape)
    w = m[:, :, None] if a.ndim == 3 else m
    channels = a.shape[2] if a.ndim == 3 else 1
    total = m.sum() * channels
    if total == 0:
        return math.nan
    err = float(np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2 * w) / total)
    if err == 0:
        return math.inf
    return float(10 * np.log10(float(data_range) ** 2 / err))


def masked_ssim(gt, pred, mask, **ssim_kwargs) -> float:
    """SSIM of ``gt * mask`` against ``pred * mask`` (the mask-SSIM convention of PATN/GFLA: the background is
    zeroed in both images, then ordinary SSIM). ``ssim_kwargs`` go to :func:`structural_similarity`; a
    ``data_range="pred"`` keyword uses ``max - min`` of the masked prediction as the papers do."""
    a = apply_mask(gt, mask)
    b = apply_mask(pred, mask)
    if isinstance(ssim_kwargs.get("data_range"), str):
        if ssim_kwargs["data_range"] != "pred":
            raise ValueError(f"data_range: expected a number or 'pred', got {_short(ssim_kwargs['data_range'])}")
        rng = b.max() - b.min()
        ssim_kwargs["data_range"] = rng if rng > 0 else 1.0
    return structural_similarity(a, b, **ssim_kwargs)
